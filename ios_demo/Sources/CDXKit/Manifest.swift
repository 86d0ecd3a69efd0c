import Foundation

/// The parts of a cdx `manifest.json` (cdx/schemas/manifest.schema.json, manifest_version 1.0) the app reads.
/// Keys are spelled out in CodingKeys (no snake-case strategy: it would also rewrite dictionary keys such as the
/// tensor names in `golden.inputs`); tests/test_ios_demo.py checks every key against the schema.
public struct Manifest: Decodable {
    public let manifestVersion: String
    public let source: Source
    public let conditioning: Conditioning
    public let rng: RNGInfo?
    public let models: [ModelEntry]
    public let files: [FileEntry]

    enum CodingKeys: String, CodingKey {
        case manifestVersion = "manifest_version"
        case source
        case conditioning
        case rng
        case models
        case files
    }

    public struct Source: Decodable {
        public let name: String?
        public let weightsSha256: String

        enum CodingKeys: String, CodingKey {
            case name
            case weightsSha256 = "weights_sha256"
        }
    }

    public struct Conditioning: Decodable {
        public let type: String
        public let numClasses: Int?
        public let classNames: [String]?
        public let guidance: Guidance?

        enum CodingKeys: String, CodingKey {
            case type
            case numClasses = "num_classes"
            case classNames = "class_names"
            case guidance
        }

        /// Class names for the picker: the manifest's names, else "class i".
        public var classLabels: [String] {
            let count = numClasses ?? classNames?.count ?? 0
            return (0..<count).map { index in
                if let names = classNames, index < names.count { return names[index] }
                return "class \(index)"
            }
        }
    }

    public struct Guidance: Decodable {
        public let embedded: Bool
        public let defaultValue: Double?
        public let range: [Double]?

        enum CodingKeys: String, CodingKey {
            case embedded
            case defaultValue = "default"
            case range
        }
    }

    public struct RNGInfo: Decodable {
        public let name: String
    }

    public struct TensorSpec: Decodable {
        public let name: String
        public let shape: [Int]
        public let dtype: String
        public let range: [Double]?

        enum CodingKeys: String, CodingKey {
            case name
            case shape
            case dtype
            case range
        }

        public var elementCount: Int { shape.reduce(1, *) }
    }

    public struct Golden: Decodable {
        public let seeds: [Int]?
        public let prompts: [String]?
        public let inputs: [String: String]
        public let outputs: [String: String]

        enum CodingKeys: String, CodingKey {
            case seeds
            case prompts
            case inputs
            case outputs
        }
    }

    /// A `text_encoder` model's `tokenizer` section: what ClipTokenizer needs to turn a prompt into input_ids.
    public struct TokenizerSection: Decodable {
        public let type: String
        public let files: TokenizerFiles
        public let maxLength: Int
        public let bosTokenId: Int
        public let eosTokenId: Int
        public let padTokenId: Int
        public let unkTokenId: Int?
        public let normalize: [String]
        public let splitPattern: String
        public let byteLevel: String
        public let endOfWordSuffix: String

        enum CodingKeys: String, CodingKey {
            case type
            case files
            case maxLength = "max_length"
            case bosTokenId = "bos_token_id"
            case eosTokenId = "eos_token_id"
            case padTokenId = "pad_token_id"
            case unkTokenId = "unk_token_id"
            case normalize
            case splitPattern = "split_pattern"
            case byteLevel = "byte_level"
            case endOfWordSuffix = "end_of_word_suffix"
        }
    }

    public struct TokenizerFiles: Decodable {
        public let vocab: String
        public let merges: String
        public let vectors: String
    }

    public struct ModelEntry: Decodable, Identifiable {
        public let name: String
        public let role: String
        public let target: String
        public let format: String
        public let precision: String
        public let file: String
        public let steps: Int?
        public let inputs: [TensorSpec]
        public let outputs: [TensorSpec]
        public let golden: Golden?
        public let tokenizer: TokenizerSection?

        enum CodingKeys: String, CodingKey {
            case name
            case role
            case target
            case format
            case precision
            case file
            case steps
            case inputs
            case outputs
            case golden
            case tokenizer
        }

        public var id: String { name }
    }

    public struct FileEntry: Decodable {
        public let path: String
        public let sha256: String
        public let sizeBytes: Int

        enum CodingKeys: String, CodingKey {
            case path
            case sha256
            case sizeBytes = "size_bytes"
        }
    }

    /// The models this app runs: one-step (or multi-step-in-graph) generators packaged as .mlpackage.
    public var coreMLGenerators: [ModelEntry] {
        models.filter { $0.role == "generator" && $0.format == "mlpackage" }
    }

    /// The Core ML text encoder that turns a prompt into `generator`'s `text_embedding` (nil: not a text student).
    public func textEncoder(for generator: ModelEntry) -> ModelEntry? {
        guard generator.inputs.contains(where: { $0.name == "text_embedding" }) else { return nil }
        let encoders = models.filter { $0.role == "text_encoder" && $0.format == "mlpackage" && $0.tokenizer != nil }
        return encoders.first(where: { $0.precision == generator.precision }) ?? encoders.first
    }

    /// Guidance w fed to a `guidance_scale` input: the manifest's default (8.0 when absent, as cdx convert does).
    public var defaultGuidance: Double { conditioning.guidance?.defaultValue ?? 8.0 }
}
