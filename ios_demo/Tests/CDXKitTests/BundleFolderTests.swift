import CDXKit
import CoreML
import Foundation
import XCTest

/// Path refusal, sha256 verification and golden decoding on a tiny hand-made bundle (no Core ML needed).
final class BundleFolderTests: XCTestCase {
    func makeBundle(payload: Data = Data([1, 2, 3, 4]), listedSha: String? = nil) throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent(UUID().uuidString, isDirectory: true)
        try FileManager.default.createDirectory(at: dir.appendingPathComponent("golden"), withIntermediateDirectories: true)
        try payload.write(to: dir.appendingPathComponent("golden/x.bin"))
        // sha256 of bytes 01 02 03 04
        let sha = listedSha ?? "9f64a747e1b97f131fabb6b447296c9b6f0201e79fb3c5356e6c77e89b6a806a"
        let manifest = """
        {"manifest_version": "1.0", "source": {"weights_sha256": "\(String(repeating: "0", count: 64))"},
         "conditioning": {"type": "none"}, "models": [],
         "files": [{"path": "golden/x.bin", "sha256": "\(sha)", "size_bytes": 4}]}
        """
        try Data(manifest.utf8).write(to: dir.appendingPathComponent("manifest.json"))
        return dir
    }

    func testRefusesEscapingPaths() throws {
        let bundle = try BundleFolder(root: try makeBundle())
        for bad in ["../x", "/etc/passwd", "a/../../b", "a\\b", "", "golden//x.bin", "~/x"] {
            XCTAssertThrowsError(try bundle.resolve(bad), "accepted \(bad)")
        }
        XCTAssertNoThrow(try bundle.resolve("golden/x.bin"))
    }

    func testRefusesASymlinkLeadingOut() throws {
        let root = try makeBundle()
        try FileManager.default.createSymbolicLink(at: root.appendingPathComponent("golden/out"),
                                                   withDestinationURL: URL(fileURLWithPath: "/etc"))
        let bundle = try BundleFolder(root: root)
        XCTAssertThrowsError(try bundle.resolve("golden/out/hosts"))
    }

    func testVerifiesSha256() throws {
        XCTAssertNoThrow(try BundleFolder(root: try makeBundle()).read("golden/x.bin"))
        let tampered = try BundleFolder(root: try makeBundle(payload: Data([1, 2, 3, 5])))
        XCTAssertThrowsError(try tampered.read("golden/x.bin"))
        XCTAssertThrowsError(try BundleFolder(root: try makeBundle()).read("manifest.json"))  // not listed
    }

    func testDecodesLittleEndianTensors() throws {
        var bytes = Data()
        for v: Int64 in [3, -1] { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
        guard case .ints(let ints) = try decodeRaw(bytes, dtype: "int64", what: "t") else { return XCTFail("not ints") }
        XCTAssertEqual(ints, [3, -1])
        XCTAssertEqual(halfToFloat(0x3C00), 1.0)
        XCTAssertEqual(halfToFloat(0xC000), -2.0)
        XCTAssertEqual(halfToFloat(0x0001), Float(sign: .plus, exponent: -24, significand: 1))
    }

    func testInt64ClassLabelsAreFedAsInt32() {
        XCTAssertEqual(coreMLArrayTypeForManifestDType["int64"], .int32)
        XCTAssertEqual(coreMLArrayTypeForManifestDType["float32"], .float32)
    }
}
