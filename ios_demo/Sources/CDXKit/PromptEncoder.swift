import Foundation

/// The path a typed prompt takes to a text student, all from the manifest: prompt → ClipTokenizer (the text
/// encoder's `tokenizer` section and its sha256-checked vocab.json / merges.txt) → input_ids → the bundle's
/// `text_encoder` .mlpackage (int64 ids fed as int32, like class labels) → text_embedding → the generator.
public final class PromptEncoder: @unchecked Sendable {
    public let tokenizer: ClipTokenizer
    public let encoder: CoreMLGenerator
    public let outputName: String

    public static func load(bundle: BundleFolder, entry: Manifest.ModelEntry,
                            computeUnits: ComputeUnitsChoice) async throws -> PromptEncoder {
        guard let section = entry.tokenizer else {
            throw BundleError.invalid("\(entry.name): no tokenizer section in the manifest")
        }
        guard entry.inputs.count == 1, let output = entry.outputs.first else {
            throw BundleError.invalid("\(entry.name): a text encoder takes input_ids and returns text_embedding")
        }
        guard entry.inputs[0].elementCount == section.maxLength else {
            throw BundleError.invalid("\(entry.name): input \(entry.inputs[0].name) does not hold max_length \(section.maxLength) ids")
        }
        let tokenizer = try ClipTokenizer.load(section: section, bundle: bundle)
        let encoder = try await CoreMLGenerator.load(bundle: bundle, entry: entry, computeUnits: computeUnits)
        return PromptEncoder(tokenizer: tokenizer, encoder: encoder, outputName: output.name)
    }

    init(tokenizer: ClipTokenizer, encoder: CoreMLGenerator, outputName: String) {
        self.tokenizer = tokenizer
        self.encoder = encoder
        self.outputName = outputName
    }

    /// text_embedding of `prompt` (row-major floats), its input_ids and the encoder's time in ms.
    public func embed(_ prompt: String) throws -> (embedding: [Float], inputIds: [Int], ms: Double) {
        let ids = try tokenizer.encode(prompt)
        let input = encoder.entry.inputs[0]
        let run = try encoder.run([input.name: .ints(ids.map { Int64($0) })])
        guard let embedding = run.outputs[outputName] else {
            throw BundleError.invalid("\(encoder.entry.name): prediction has no output \(outputName)")
        }
        return (embedding, ids, run.ms)
    }
}
