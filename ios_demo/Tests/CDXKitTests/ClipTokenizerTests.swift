@testable import CDXKit
import Foundation
import XCTest

/// ClipTokenizer against the shared CLIP tokenizer vectors (tests/data/tokenizer_vectors.json in the cdx repository,
/// made by transformers): every text's BPE symbols and padded input_ids, for the byte-level and the merges sets.
/// `CDX_TOKENIZER_VECTORS=/path/to/tokenizer_vectors.json` overrides the location.
final class ClipTokenizerTests: XCTestCase {
    struct Vectors: Decodable {
        struct Case: Decodable {
            let text: String
            let tokens: [String]
            let input_ids: [Int]
        }

        struct VectorSet: Decodable {
            let name: String
            let vocab_json: String
            let merges_txt: String
            let tokenizer: Manifest.TokenizerSection
            let cases: [Case]
        }

        let name: String
        let sets: [VectorSet]
    }

    func loadVectors() throws -> Vectors {
        let url: URL
        if let path = ProcessInfo.processInfo.environment["CDX_TOKENIZER_VECTORS"] {
            url = URL(fileURLWithPath: path)
        } else {
            // ios_demo/Tests/CDXKitTests/ClipTokenizerTests.swift → repository root → tests/data/tokenizer_vectors.json
            url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                .deletingLastPathComponent().deletingLastPathComponent()
                .appendingPathComponent("tests/data/tokenizer_vectors.json")
        }
        return try JSONDecoder().decode(Vectors.self, from: Data(contentsOf: url))
    }

    func testEveryTextMatchesTransformers() throws {
        let vectors = try loadVectors()
        XCTAssertEqual(vectors.name, "cdx-clip-bpe-v1")
        XCTAssertFalse(vectors.sets.isEmpty)
        for set in vectors.sets {
            let vocab = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(set.vocab_json.utf8)) as? [String: Int])
            let tokenizer = try ClipTokenizer(section: set.tokenizer, vocab: vocab, merges: set.merges_txt)
            for c in set.cases {
                XCTAssertEqual(try tokenizer.tokenize(c.text), c.tokens, "\(set.name) \(c.text)")
                XCTAssertEqual(try tokenizer.encode(c.text), c.input_ids, "\(set.name) \(c.text)")
            }
        }
    }
}
