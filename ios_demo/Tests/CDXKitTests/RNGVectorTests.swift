import CDXKit
import Foundation
import XCTest

/// CDXNormalV1 against the shared vectors (tests/data/rng_vectors.json in the cdx repository), bit for bit.
/// `CDX_RNG_VECTORS=/path/to/rng_vectors.json` overrides the location (default: found relative to this file).
final class RNGVectorTests: XCTestCase {
    struct Vectors: Decodable {
        struct Case: Decodable {
            let seed: UInt64
            let stream: UInt32
            let key: UInt32
            let a: [UInt32]
            let b: [UInt32]
            let float32_bits: [UInt32]
        }

        let name: String
        let mix32: [[UInt32]]
        let cases: [Case]
    }

    func loadVectors() throws -> Vectors {
        let url: URL
        if let path = ProcessInfo.processInfo.environment["CDX_RNG_VECTORS"] {
            url = URL(fileURLWithPath: path)
        } else {
            // ios_demo/Tests/CDXKitTests/RNGVectorTests.swift → repository root → tests/data/rng_vectors.json
            url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                .deletingLastPathComponent().deletingLastPathComponent()
                .appendingPathComponent("tests/data/rng_vectors.json")
        }
        return try JSONDecoder().decode(Vectors.self, from: Data(contentsOf: url))
    }

    func testNameMatches() throws {
        XCTAssertEqual(try loadVectors().name, CDXNormalV1.name)
    }

    func testMix32() throws {
        for pair in try loadVectors().mix32 {
            XCTAssertEqual(CDXNormalV1.mix32(pair[0]), pair[1], "mix32(\(pair[0]))")
        }
    }

    func testKeysDrawsAndFloat32BitsMatch() throws {
        let vectors = try loadVectors()
        XCTAssertFalse(vectors.cases.isEmpty)
        for c in vectors.cases {
            let key = CDXNormalV1.streamKey(seed: UInt32(truncatingIfNeeded: c.seed), stream: c.stream)
            XCTAssertEqual(key, c.key, "key of seed \(c.seed) stream \(c.stream)")
            for i in 0..<c.a.count {
                let pair = CDXNormalV1.draws(key: key, index: UInt32(i))
                XCTAssertEqual(pair.a, c.a[i], "a[\(i)] seed \(c.seed)")
                XCTAssertEqual(pair.b, c.b[i], "b[\(i)] seed \(c.seed)")
            }
            let z = CDXNormalV1.normal(seed: Int(c.seed), count: c.float32_bits.count, stream: Int(c.stream))
            XCTAssertEqual(z.map(\.bitPattern), c.float32_bits, "float32 bits of seed \(c.seed) stream \(c.stream)")
        }
    }

    func testRowMajorPrefixAndStreamsDiffer() {
        let long = CDXNormalV1.normal(seed: 7, count: 1000)
        XCTAssertEqual(Array(long.prefix(10)).map(\.bitPattern), CDXNormalV1.normal(seed: 7, count: 10).map(\.bitPattern))
        XCTAssertNotEqual(long.prefix(10), CDXNormalV1.normal(seed: 7, count: 10, stream: 1).prefix(10))
        let mean = long.reduce(0, +) / Float(long.count)
        XCTAssertLessThan(abs(mean), 0.1)
    }
}
