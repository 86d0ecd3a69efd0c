import CDXKit
import CoreGraphics
import Foundation
import SwiftUI

/// The app's state: the opened bundle, the loaded generator, the last image and the last benchmark.
@MainActor
final class DemoModel: ObservableObject {
    @Published var bundle: BundleFolder?
    @Published var modelName: String = ""
    @Published var computeUnits: ComputeUnitsChoice = .all
    @Published var seed: Int = 0
    @Published var classIndex: Int = 0
    @Published var guidance: Double = 8
    @Published var prompt: String = ""
    @Published var warmup: Int = 3
    @Published var runs: Int = 20
    @Published var status: String = "Open a cdx Core ML bundle (a folder with manifest.json)."
    @Published var error: String?
    @Published var busy = false
    @Published var image: CGImage?
    @Published var lastLatency: String = ""
    @Published var benchmarkSummary: String = ""
    @Published var resultsURL: URL?

    private var generator: CoreMLGenerator?
    private var promptEncoder: PromptEncoder?

    var models: [Manifest.ModelEntry] { bundle?.manifest.coreMLGenerators ?? [] }
    var classNames: [String] { bundle?.manifest.conditioning.classLabels ?? [] }
    var hasClassInput: Bool { currentEntry?.inputs.contains { $0.name == InputRole.classInputName } ?? false }
    var hasGuidanceInput: Bool { currentEntry?.inputs.contains { $0.name == InputRole.guidanceInputName } ?? false }
    /// A text student with a Core ML text encoder in the bundle: Generate takes a prompt.
    var hasPromptInput: Bool {
        guard let bundle, let entry = currentEntry else { return false }
        return bundle.manifest.textEncoder(for: entry) != nil
    }
    var guidanceRange: ClosedRange<Double> {
        let range = bundle?.manifest.conditioning.guidance?.range ?? []
        let value = bundle?.manifest.defaultGuidance ?? 8
        return range.count == 2 && range[0] < range[1] ? range[0]...range[1] : min(1, value)...max(15, value)
    }
    var currentEntry: Manifest.ModelEntry? { models.first { $0.name == modelName } }

    /// Copies a picked folder into the app's container (so it stays readable), then opens and checks it.
    func open(pickedFolder url: URL) {
        let scoped = url.startAccessingSecurityScopedResource()
        defer { if scoped { url.stopAccessingSecurityScopedResource() } }
        do {
            let fm = FileManager.default
            let base = try fm.url(for: .applicationSupportDirectory, in: .userDomainMask, appropriateFor: nil, create: true)
                .appendingPathComponent("bundles", isDirectory: true)
            try fm.createDirectory(at: base, withIntermediateDirectories: true)
            let copy = base.appendingPathComponent(url.lastPathComponent, isDirectory: true)
            if fm.fileExists(atPath: copy.path) { try fm.removeItem(at: copy) }
            try fm.copyItem(at: url, to: copy)
            try open(folder: copy)
        } catch {
            fail(error)
        }
    }

    /// Opens a bundle folder already readable by the app (e.g. copied in, or CDX_BUNDLE on the simulator/Mac).
    func open(folder: URL) throws {
        let opened = try BundleFolder(root: folder)
        guard let first = opened.manifest.coreMLGenerators.first else {
            throw BundleError.invalid("this manifest has no Core ML generator (role generator, format mlpackage)")
        }
        if let rng = opened.manifest.rng?.name, rng != CDXNormalV1.name {
            status = "Note: the manifest's rng is \(rng); this app draws \(CDXNormalV1.name)."
        }
        bundle = opened
        modelName = first.name
        guidance = opened.manifest.defaultGuidance
        classIndex = 0
        prompt = opened.manifest.textEncoder(for: first)?.golden?.prompts?.first ?? ""
        generator = nil
        promptEncoder = nil
        image = nil
        error = nil
        status = "Opened \(opened.manifest.source.name ?? folder.lastPathComponent): \(opened.manifest.coreMLGenerators.count) Core ML generator(s)."
    }

    /// The loaded generator for the chosen model and compute units (verifies sha256, compiles, loads).
    private func loadedGenerator() async throws -> CoreMLGenerator {
        guard let bundle, let entry = currentEntry else { throw BundleError.invalid("no bundle open") }
        if let generator, generator.entry.name == entry.name, generator.computeUnits == computeUnits { return generator }
        status = "Verifying and compiling \(entry.file)…"
        let loaded = try await CoreMLGenerator.load(bundle: bundle, entry: entry, computeUnits: computeUnits)
        generator = loaded
        return loaded
    }

    /// The prompt path for the chosen generator (nil when it takes no text): tokenizer + Core ML text encoder.
    private func loadedPromptEncoder() async throws -> PromptEncoder? {
        guard let bundle, let entry = currentEntry, let encoderEntry = bundle.manifest.textEncoder(for: entry) else { return nil }
        if let promptEncoder, promptEncoder.encoder.entry.name == encoderEntry.name,
           promptEncoder.encoder.computeUnits == computeUnits { return promptEncoder }
        status = "Verifying and compiling \(encoderEntry.file) and the tokenizer…"
        let loaded = try await PromptEncoder.load(bundle: bundle, entry: encoderEntry, computeUnits: computeUnits)
        promptEncoder = loaded
        return loaded
    }

    func generate() {
        guard !busy else { return }
        busy = true
        error = nil
        let (seed, classIndex, guidance, prompt) = (self.seed, self.classIndex, self.guidance, self.prompt)
        Task {
            defer { busy = false }
            do {
                let generator = try await loadedGenerator()
                let encoder = try await loadedPromptEncoder()
                status = "Generating…"
                let result = try await Task.detached(priority: .userInitiated) { () -> ([String: [Float]], Double) in
                    let text = try encoder?.embed(prompt)
                    let feeds = generator.generateInputs(seed: seed, classIndex: classIndex, guidance: guidance,
                                                         textEmbedding: text?.embedding)
                    let run = try generator.run(feeds)
                    return (run.outputs, run.ms)
                }.value
                let spec = generator.entry.outputs.first { $0.name == "image" } ?? generator.entry.outputs[0]
                image = ImageRendering.cgImage(result.0[spec.name] ?? [], shape: spec.shape)
                lastLatency = String(format: "%.2f ms (this run) · load %.0f ms · %@", result.1, generator.coldLoadMs,
                                     computeUnits.rawValue)
                status = "Seed \(seed)" + (hasClassInput && classIndex < classNames.count ? " · \(classNames[classIndex])" : "")
                    + (encoder != nil ? " · \"\(prompt)\"" : "")
            } catch {
                fail(error)
            }
        }
    }

    func benchmark() {
        guard !busy, let bundle else { return }
        busy = true
        error = nil
        let (seed, classIndex, guidance, warmup, runs) = (self.seed, self.classIndex, self.guidance, self.warmup, self.runs)
        Task {
            defer { busy = false }
            do {
                let generator = try await loadedGenerator()
                status = "Benchmarking (\(warmup) warm-up + \(runs) runs)…"
                let report = try await Task.detached(priority: .userInitiated) {
                    try Benchmark.run(bundle: bundle, generator: generator, seed: seed, classIndex: classIndex,
                                      guidance: guidance, warmup: warmup, runs: runs)
                }.value
                let document = Benchmark.results(bundle: bundle, reports: [report])
                let data = try document.jsonData()
                let dir = try FileManager.default.url(for: .documentDirectory, in: .userDomainMask, appropriateFor: nil,
                                                      create: true)
                let url = dir.appendingPathComponent("cdx-device-results-\(generator.entry.name)-\(computeUnits.rawValue).json")
                try data.write(to: url, options: .atomic)
                resultsURL = url
                // Also on the console, between markers, for collecting it from Xcode's log or `log collect`.
                print("CDX-DEVICE-RESULTS-BEGIN\n\(String(decoding: data, as: UTF8.self))\nCDX-DEVICE-RESULTS-END")
                let l = report.latency
                var lines = [String(format: "median %.2f ms · p90 %.2f · min %.2f · max %.2f (%d runs) · first %.2f · load %.0f ms",
                                    l.medianMs, l.p90Ms, l.minMs, l.maxMs, l.runs, report.firstRunMs, generator.coldLoadMs)]
                if let g = report.golden {
                    lines.append(String(format: "golden: %d seed(s) · max_abs %.3g · PSNR %.1f dB", g.samples, g.maxAbs, g.psnrDb))
                    if let match = g.rngMatches {
                        lines.append("RNG vs golden noise: " + (match ? "identical (cdx-normal-v1)" : "DIFFERENT"))
                    }
                } else {
                    lines.append("golden: this model has no golden data")
                }
                benchmarkSummary = lines.joined(separator: "\n")
                status = "Benchmark written to \(url.lastPathComponent)."
            } catch {
                fail(error)
            }
        }
    }

    private func fail(_ error: Error) {
        self.error = (error as? LocalizedError)?.errorDescription ?? String(describing: error)
        status = "Stopped."
    }
}

/// NCHW [1, C, H, W] floats in [0, 1] → an RGBA CGImage (C = 1 grey, 3 RGB, 4 RGBA).
enum ImageRendering {
    static func cgImage(_ values: [Float], shape: [Int]) -> CGImage? {
        let dims = shape.count == 4 ? Array(shape.dropFirst()) : shape
        guard dims.count == 3 else { return nil }
        let (c, h, w) = (dims[0], dims[1], dims[2])
        let plane = h * w
        guard values.count >= c * plane, c >= 1 else { return nil }
        func byte(_ v: Float) -> UInt8 { UInt8(max(0, min(255, (v * 255).rounded()))) }
        var rgba = [UInt8](repeating: 255, count: plane * 4)
        for i in 0..<plane {
            let r = byte(values[i])
            rgba[4 * i] = r
            rgba[4 * i + 1] = c >= 3 ? byte(values[plane + i]) : r
            rgba[4 * i + 2] = c >= 3 ? byte(values[2 * plane + i]) : r
            if c >= 4 { rgba[4 * i + 3] = byte(values[3 * plane + i]) }
        }
        guard let provider = CGDataProvider(data: Data(rgba) as CFData) else { return nil }
        return CGImage(width: w, height: h, bitsPerComponent: 8, bitsPerPixel: 32, bytesPerRow: w * 4,
                       space: CGColorSpaceCreateDeviceRGB(),
                       bitmapInfo: CGBitmapInfo(rawValue: CGImageAlphaInfo.premultipliedLast.rawValue),
                       provider: provider, decode: nil, shouldInterpolate: false, intent: .defaultIntent)
    }
}
