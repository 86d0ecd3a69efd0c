import Foundation

/// The golden check of one model: every golden seed's recorded inputs through the model vs the recorded outputs,
/// and the app's own cdx-normal-v1 noise for each golden seed vs the recorded noise (bit for bit).
public struct GoldenReport {
    public var samples: Int
    public var maxAbs: Double
    public var psnrDb: Double
    /// Random inputs regenerated from the golden seeds that equal the golden files exactly (nil: no seeds listed).
    public var rngMatches: Bool?
    public var perSeed: [(seed: Int, maxAbs: Double)]
}

public struct BenchmarkReport {
    public var generator: CoreMLGenerator
    public var firstRunMs: Double
    public var timingsMs: [Double]
    public var golden: GoldenReport?

    public var latency: DeviceResults.Latency { DeviceResults.Latency(timingsMs: timingsMs) }
}

public enum Benchmark {
    /// Reads a model's golden inputs/outputs (verified against files[]) and splits them per seed.
    public static func goldenCheck(bundle: BundleFolder, generator: CoreMLGenerator) throws -> GoldenReport? {
        let entry = generator.entry
        guard let golden = entry.golden else { return nil }
        var inputs: [String: TensorValues] = [:]
        var samples: Int?
        for spec in entry.inputs {
            guard let path = golden.inputs[spec.name] else {
                throw BundleError.invalid("golden.inputs has no file for input \(spec.name)")
            }
            let values = try decodeRaw(try bundle.read(path), dtype: spec.dtype, what: path)
            let count = values.count / max(spec.elementCount, 1)
            guard values.count == count * spec.elementCount, count > 0, samples == nil || samples == count else {
                throw BundleError.invalid("\(path): \(values.count) values is not a whole number of samples")
            }
            samples = count
            inputs[spec.name] = values
        }
        guard let n = samples else { return nil }
        var expected: [String: TensorValues] = [:]
        for spec in entry.outputs {
            guard let path = golden.outputs[spec.name] else { continue }
            let values = try decodeRaw(try bundle.read(path), dtype: spec.dtype, what: path)
            guard values.count == n * spec.elementCount else {
                throw BundleError.invalid("\(path): expected \(n) sample(s) of \(spec.elementCount) values")
            }
            expected[spec.name] = values
        }
        var allOurs: [Float] = []
        var allReference: [Float] = []
        var perSeed: [(seed: Int, maxAbs: Double)] = []
        let seeds = golden.seeds ?? Array(0..<n)
        let primary = entry.outputs.first { expected[$0.name] != nil }
        for i in 0..<n {
            let feeds = inputs.mapValues { $0.sample(i, of: n) }
            let (outputs, _) = try generator.run(feeds)
            var worst = 0.0
            for spec in entry.outputs {
                guard let reference = expected[spec.name]?.sample(i, of: n).asFloats, let ours = outputs[spec.name] else {
                    continue
                }
                let d = maxAbsDiff(reference, ours)
                worst = d.isNaN || worst.isNaN ? .nan : max(worst, d)
                if spec.name == primary?.name {
                    allOurs += ours
                    allReference += reference
                }
            }
            perSeed.append((seed: i < seeds.count ? seeds[i] : i, maxAbs: worst))
        }
        let maxAbs = perSeed.reduce(0.0) { $0.isNaN || $1.maxAbs.isNaN ? .nan : max($0, $1.maxAbs) }
        let peak = primary.map { psnrPeak($0, reference: allReference) } ?? 1
        var rngMatches: Bool?
        if let listed = golden.seeds, listed.count == n {
            rngMatches = true
            let roles = InputRole.roles(for: entry)
            for (index, spec) in entry.inputs.enumerated() {
                guard case .random(let stream) = roles[index] else { continue }
                for (i, seed) in listed.enumerated() {
                    let ours = CDXNormalV1.normal(seed: seed, count: spec.elementCount, stream: stream)
                    let recorded = inputs[spec.name]?.sample(i, of: n).asFloats ?? []
                    if ours.map(\.bitPattern) != recorded.map(\.bitPattern) { rngMatches = false }
                }
            }
        }
        return GoldenReport(samples: n, maxAbs: maxAbs, psnrDb: psnr(reference: allReference, test: allOurs, peak: peak),
                            rngMatches: rngMatches, perSeed: perSeed)
    }

    /// Warm-up + `runs` timed predictions of one Generate input (seed, class, w), then the golden check.
    public static func run(bundle: BundleFolder, generator: CoreMLGenerator, seed: Int, classIndex: Int,
                           guidance: Double, warmup: Int, runs: Int,
                           progress: (String) -> Void = { _ in }) throws -> BenchmarkReport {
        let feeds = generator.generateInputs(seed: seed, classIndex: classIndex, guidance: guidance)
        progress("first run")
        let firstRunMs = try generator.run(feeds).ms
        for i in 0..<max(0, warmup) {
            progress("warm-up \(i + 1)/\(warmup)")
            _ = try generator.run(feeds)
        }
        var timings: [Double] = []
        for i in 0..<max(1, runs) {
            if i % 5 == 0 { progress("timed run \(i + 1)/\(runs)") }
            timings.append(try generator.run(feeds).ms)
        }
        progress("golden check")
        let golden = try goldenCheck(bundle: bundle, generator: generator)
        return BenchmarkReport(generator: generator, firstRunMs: firstRunMs, timingsMs: timings, golden: golden)
    }

    /// The results document for one or more benchmark reports of the same bundle.
    public static func results(bundle: BundleFolder, reports: [BenchmarkReport], appVersion: String = "0.1.0")
        -> DeviceResults {
        let formatter = ISO8601DateFormatter()
        let entries = reports.map { report -> DeviceResults.Result in
            var golden: DeviceResults.GoldenCheck?
            if let g = report.golden, g.maxAbs.isFinite, !g.psnrDb.isNaN {
                // JSON has no infinity: identical outputs are written as 999 dB, as `cdx bench device` does.
                golden = DeviceResults.GoldenCheck(samples: g.samples, maxAbs: g.maxAbs, psnrDb: min(g.psnrDb, 999))
            }
            return DeviceResults.Result(
                model: report.generator.entry.name,
                backend: "coreml-\(report.generator.computeUnits.rawValue)",
                computeUnits: report.generator.computeUnits.rawValue,
                coldLoadMs: report.generator.coldLoadMs,
                firstRunMs: report.firstRunMs,
                latency: report.latency,
                golden: golden
            )
        }
        return DeviceResults(
            createdAt: formatter.string(from: Date()),
            device: currentDevice(),
            app: DeviceResults.App(name: "cdx-ios-demo", version: appVersion),
            bundle: DeviceResults.BundleInfo(sourceWeightsSha256: bundle.manifest.source.weightsSha256,
                                             manifestSha256: bundle.manifestSha256,
                                             target: reports.first?.generator.entry.target ?? "coreml"),
            results: entries
        )
    }
}
