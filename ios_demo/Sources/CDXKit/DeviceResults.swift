import Foundation

/// The `cdx-device-results/1` document (benchmarks/device_results.schema.json) that `cdx bench ingest FILE --report
/// REPORT.json` merges into a report. Keys are spelled out; tests/test_ios_demo.py checks them against the schema.
public struct DeviceResults: Encodable {
    public var schema = "cdx-device-results/1"
    public var createdAt: String
    public var device: Device
    public var app: App
    public var bundle: BundleInfo
    public var results: [Result]

    enum CodingKeys: String, CodingKey {
        case schema
        case createdAt = "created_at"
        case device
        case app
        case bundle
        case results
    }

    public struct Device: Encodable {
        public var model: String
        public var os: String
        public var osVersion: String?
        public var abi: String?
        public var ramGb: Double?

        enum CodingKeys: String, CodingKey {
            case model
            case os
            case osVersion = "os_version"
            case abi
            case ramGb = "ram_gb"
        }
    }

    public struct App: Encodable {
        public var name: String
        public var version: String
    }

    public struct BundleInfo: Encodable {
        public var sourceWeightsSha256: String
        public var manifestSha256: String
        public var target: String

        enum CodingKeys: String, CodingKey {
            case sourceWeightsSha256 = "source_weights_sha256"
            case manifestSha256 = "manifest_sha256"
            case target
        }
    }

    public struct Result: Encodable {
        public var model: String
        public var runtime = "coreml"
        public var backend: String
        public var computeUnits: String
        public var coldLoadMs: Double
        public var firstRunMs: Double
        public var latency: Latency
        public var golden: GoldenCheck?

        enum CodingKeys: String, CodingKey {
            case model
            case runtime
            case backend
            case computeUnits = "compute_units"
            case coldLoadMs = "cold_load_ms"
            case firstRunMs = "first_run_ms"
            case latency
            case golden
        }
    }

    public struct Latency: Encodable {
        public var medianMs: Double
        public var p90Ms: Double
        public var p99Ms: Double
        public var minMs: Double
        public var maxMs: Double
        public var runs: Int

        enum CodingKeys: String, CodingKey {
            case medianMs = "median_ms"
            case p90Ms = "p90_ms"
            case p99Ms = "p99_ms"
            case minMs = "min_ms"
            case maxMs = "max_ms"
            case runs
        }

        /// Percentiles with linear interpolation (numpy's default, as `cdx bench` computes them).
        public init(timingsMs: [Double]) {
            let sorted = timingsMs.sorted()
            func percentile(_ q: Double) -> Double {
                guard sorted.count > 1 else { return sorted.first ?? 0 }
                let position = q / 100 * Double(sorted.count - 1)
                let lower = Int(position.rounded(.down))
                let upper = min(lower + 1, sorted.count - 1)
                return sorted[lower] + (sorted[upper] - sorted[lower]) * (position - Double(lower))
            }
            medianMs = percentile(50)
            p90Ms = percentile(90)
            p99Ms = percentile(99)
            minMs = sorted.first ?? 0
            maxMs = sorted.last ?? 0
            runs = sorted.count
        }
    }

    public struct GoldenCheck: Encodable {
        public var samples: Int
        public var maxAbs: Double
        public var psnrDb: Double

        enum CodingKeys: String, CodingKey {
            case samples
            case maxAbs = "max_abs"
            case psnrDb = "psnr_db"
        }
    }

    /// Pretty-printed JSON with sorted keys.
    public func jsonData() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return try encoder.encode(self)
    }
}

/// This device as the results file names it: the hardware identifier (e.g. "iPhone16,1"), OS and version, RAM.
public func currentDevice() -> DeviceResults.Device {
    var info = utsname()
    uname(&info)
    let machine = withUnsafeBytes(of: &info.machine) { raw in
        String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
    }
    let version = ProcessInfo.processInfo.operatingSystemVersion
    var model = machine
    #if os(macOS)
    var size = 0
    if sysctlbyname("hw.model", nil, &size, nil, 0) == 0, size > 0 {
        var buffer = [CChar](repeating: 0, count: size)
        if sysctlbyname("hw.model", &buffer, &size, nil, 0) == 0 { model = String(cString: buffer) }
    }
    #endif
    #if os(iOS)
    let os = "iOS"
    #elseif os(macOS)
    let os = "macOS"
    #else
    let os = "unknown"
    #endif
    // In the iOS Simulator uname reports the host's architecture; SIMULATOR_MODEL_IDENTIFIER names the simulated device.
    let simulated = ProcessInfo.processInfo.environment["SIMULATOR_MODEL_IDENTIFIER"].map { "\($0) (Simulator)" }
    return DeviceResults.Device(
        model: simulated ?? model,
        os: os,
        osVersion: "\(version.majorVersion).\(version.minorVersion).\(version.patchVersion)",
        abi: machine.hasPrefix("x86") ? "x86_64" : "arm64",
        ramGb: (Double(ProcessInfo.processInfo.physicalMemory) / 1_073_741_824 * 10).rounded() / 10
    )
}
