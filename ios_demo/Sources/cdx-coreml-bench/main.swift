// A command-line benchmark for macOS (Apple silicon runs Core ML on the same CPU/GPU/Neural Engine kinds as phones):
//
//   swift run -c release cdx-coreml-bench BUNDLE_DIR [--model NAME] [--compute-units all|cpuAndNeuralEngine|cpuAndGPU|cpuOnly]
//       [--warmup 3] [--runs 20] [--seed 0] [--class 0] [-o results.json]
//
// It does exactly what the app's benchmark does (same CDXKit code) and writes the cdx-device-results/1 JSON.
import CDXKit
import Foundation

func usage() -> Never {
    FileHandle.standardError.write(Data("""
    usage: cdx-coreml-bench BUNDLE_DIR [--model NAME] [--compute-units all|cpuAndNeuralEngine|cpuAndGPU|cpuOnly]
           [--warmup N] [--runs N] [--seed S] [--class C] [-o RESULTS.json]\n
    """.utf8))
    exit(2)
}

var arguments = Array(CommandLine.arguments.dropFirst())
var options: [String: String] = [:]
var positional: [String] = []
while !arguments.isEmpty {
    let arg = arguments.removeFirst()
    if arg.hasPrefix("-") {
        guard !arguments.isEmpty else { usage() }
        options[arg] = arguments.removeFirst()
    } else {
        positional.append(arg)
    }
}
guard positional.count == 1 else { usage() }

do {
    let bundle = try BundleFolder(root: URL(fileURLWithPath: positional[0]))
    let candidates = bundle.manifest.coreMLGenerators
    let units = try options["--compute-units"].map { name -> ComputeUnitsChoice in
        guard let choice = ComputeUnitsChoice(rawValue: name) else { throw BundleError.invalid("unknown compute units \(name)") }
        return choice
    } ?? .all
    let chosen = options["--model"].map { name in candidates.filter { $0.name == name } } ?? candidates
    guard !chosen.isEmpty else { throw BundleError.invalid("no Core ML generator to run in this bundle") }
    var reports: [BenchmarkReport] = []
    for entry in chosen {
        let generator = try await CoreMLGenerator.load(bundle: bundle, entry: entry, computeUnits: units)
        let report = try Benchmark.run(bundle: bundle, generator: generator, seed: Int(options["--seed"] ?? "0") ?? 0,
                                       classIndex: Int(options["--class"] ?? "0") ?? 0,
                                       guidance: bundle.manifest.defaultGuidance,
                                       warmup: Int(options["--warmup"] ?? "3") ?? 3, runs: Int(options["--runs"] ?? "20") ?? 20)
        let l = report.latency
        var line = String(format: "%@ [%@]: median %.2f ms (p90 %.2f, %d runs), first %.2f ms, load %.0f ms",
                          entry.name, units.rawValue, l.medianMs, l.p90Ms, l.runs, report.firstRunMs, generator.coldLoadMs)
        if let g = report.golden {
            line += String(format: " · golden max_abs %.3g, PSNR %.1f dB", g.maxAbs, g.psnrDb)
            if let match = g.rngMatches { line += match ? " · rng == golden noise" : " · RNG DIFFERS FROM GOLDEN NOISE" }
        }
        print(line)
        reports.append(report)
    }
    let data = try Benchmark.results(bundle: bundle, reports: reports).jsonData()
    if let out = options["-o"] ?? options["--out"] {
        try data.write(to: URL(fileURLWithPath: out), options: .atomic)
        print("wrote \(out)  →  cdx bench ingest \(out) --report REPORT.json")
    } else {
        print(String(decoding: data, as: UTF8.self))
    }
} catch {
    FileHandle.standardError.write(Data("cdx-coreml-bench: \((error as? LocalizedError)?.errorDescription ?? "\(error)")\n".utf8))
    exit(1)
}
