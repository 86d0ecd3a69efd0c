import CoreML
import Foundation

/// Compute units the app offers (MLComputeUnits), by the names used in the UI and in the results JSON.
public enum ComputeUnitsChoice: String, CaseIterable, Identifiable, Sendable {
    case all
    case cpuAndNeuralEngine
    case cpuAndGPU
    case cpuOnly

    public var id: String { rawValue }

    public var mlComputeUnits: MLComputeUnits {
        switch self {
        case .all: return .all
        case .cpuAndNeuralEngine: return .cpuAndNeuralEngine
        case .cpuAndGPU: return .cpuAndGPU
        case .cpuOnly: return .cpuOnly
        }
    }
}

/// How one model input is filled by Generate — the rule `cdx convert` uses for the golden inputs
/// (cdx/convert/golden.py `manifest_inputs`): `class_label` ← the class picker, `guidance_scale` ← the manifest's
/// default w (or the slider), `text_embedding` ← the text encoder's output for the typed prompt (PromptEncoder;
/// seeded noise when there is none), anything else ← cdx-normal-v1 with the seed and stream = the input's index.
public enum InputRole: Equatable {
    case classLabel
    case guidance
    case text(stream: Int)
    case random(stream: Int)

    public static let classInputName = "class_label"
    public static let guidanceInputName = "guidance_scale"
    public static let textInputName = "text_embedding"

    public static func roles(for model: Manifest.ModelEntry) -> [InputRole] {
        model.inputs.enumerated().map { index, spec in
            switch spec.name {
            case classInputName: return .classLabel
            case guidanceInputName: return .guidance
            case textInputName: return .text(stream: index)
            default: return .random(stream: index)
            }
        }
    }
}

/// Manifest dtype → the MLMultiArray data type a converted .mlpackage declares for it. Core ML has no int64
/// multi-arrays: coremltools turns the manifest's int64 `class_label` into int32, so int64 values are fed as int32
/// (tests/test_ios_demo.py checks this table against a real converted .mlpackage spec).
public let coreMLArrayTypeForManifestDType: [String: MLMultiArrayDataType] = [
    "float32": .float32,
    "float16": .float16,
    "int32": .int32,
    "int64": .int32,
]

/// One compiled, loaded .mlpackage generator and the manifest entry that describes it.
public final class CoreMLGenerator: @unchecked Sendable {
    public let entry: Manifest.ModelEntry
    public let computeUnits: ComputeUnitsChoice
    public let model: MLModel
    /// Compile (.mlpackage → .mlmodelc) + load, in milliseconds.
    public let coldLoadMs: Double
    private var inputTypes: [String: MLMultiArrayDataType] = [:]

    /// Verifies the package against the manifest (sha256), compiles and loads it, and checks its interface.
    public static func load(bundle: BundleFolder, entry: Manifest.ModelEntry,
                            computeUnits: ComputeUnitsChoice) async throws -> CoreMLGenerator {
        let packageURL = try bundle.verifyPackage(entry)
        let start = DispatchTime.now().uptimeNanoseconds
        let compiled = try await MLModel.compileModel(at: packageURL)
        let configuration = MLModelConfiguration()
        configuration.computeUnits = computeUnits.mlComputeUnits
        let model = try await MLModel.load(contentsOf: compiled, configuration: configuration)
        let ms = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6
        let generator = CoreMLGenerator(entry: entry, computeUnits: computeUnits, model: model, coldLoadMs: ms)
        try generator.checkInterface()
        return generator
    }

    init(entry: Manifest.ModelEntry, computeUnits: ComputeUnitsChoice, model: MLModel, coldLoadMs: Double) {
        self.entry = entry
        self.computeUnits = computeUnits
        self.model = model
        self.coldLoadMs = coldLoadMs
    }

    /// The model's inputs/outputs must be the manifest's names and shapes, with the dtypes of the table above.
    func checkInterface() throws {
        let description = model.modelDescription
        for spec in entry.inputs {
            guard let feature = description.inputDescriptionsByName[spec.name],
                  let constraint = feature.multiArrayConstraint else {
                throw BundleError.invalid("\(entry.name): the model has no multi-array input \(spec.name)")
            }
            let shape = constraint.shape.map { $0.intValue }
            guard shape == spec.shape else {
                throw BundleError.invalid("\(entry.name): input \(spec.name) shape \(shape) != manifest \(spec.shape)")
            }
            guard let expected = coreMLArrayTypeForManifestDType[spec.dtype], constraint.dataType == expected else {
                throw BundleError.invalid("\(entry.name): input \(spec.name) is \(constraint.dataType.rawValue) "
                    + "in the model, manifest dtype \(spec.dtype)")
            }
            inputTypes[spec.name] = constraint.dataType
        }
        for spec in entry.outputs where description.outputDescriptionsByName[spec.name] == nil {
            throw BundleError.invalid("\(entry.name): the model has no output \(spec.name)")
        }
    }

    /// Generate's inputs: noise from the seed, the class, w, the prompt's text embedding — names, shapes and dtypes
    /// from the manifest only.
    public func generateInputs(seed: Int, classIndex: Int, guidance: Double,
                               textEmbedding: [Float]? = nil) -> [String: TensorValues] {
        var feeds: [String: TensorValues] = [:]
        for (spec, role) in zip(entry.inputs, InputRole.roles(for: entry)) {
            switch role {
            case .classLabel:
                feeds[spec.name] = .ints([Int64](repeating: Int64(classIndex), count: spec.elementCount))
            case .guidance:
                feeds[spec.name] = .floats([Float](repeating: Float(guidance), count: spec.elementCount))
            case .text(let stream):
                if let textEmbedding, textEmbedding.count == spec.elementCount {
                    feeds[spec.name] = .floats(textEmbedding)
                } else {
                    feeds[spec.name] = .floats(CDXNormalV1.normal(seed: seed, count: spec.elementCount, stream: stream))
                }
            case .random(let stream):
                feeds[spec.name] = .floats(CDXNormalV1.normal(seed: seed, count: spec.elementCount, stream: stream))
            }
        }
        return feeds
    }

    /// One prediction; returns every manifest output as Floats (row-major) and the wall time in ms.
    public func run(_ feeds: [String: TensorValues]) throws -> (outputs: [String: [Float]], ms: Double) {
        var features: [String: MLFeatureValue] = [:]
        for spec in entry.inputs {
            guard let values = feeds[spec.name] else { throw BundleError.invalid("no value for input \(spec.name)") }
            guard values.count == spec.elementCount else {
                throw BundleError.invalid("input \(spec.name): \(values.count) values for shape \(spec.shape)")
            }
            let type = inputTypes[spec.name] ?? .float32
            features[spec.name] = MLFeatureValue(multiArray: try Self.multiArray(values, shape: spec.shape, type: type))
        }
        let provider = try MLDictionaryFeatureProvider(dictionary: features)
        let start = DispatchTime.now().uptimeNanoseconds
        let result = try model.prediction(from: provider)
        let ms = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6
        var outputs: [String: [Float]] = [:]
        for spec in entry.outputs {
            guard let array = result.featureValue(for: spec.name)?.multiArrayValue else {
                throw BundleError.invalid("prediction has no multi-array output \(spec.name)")
            }
            outputs[spec.name] = Self.floats(array)
        }
        return (outputs, ms)
    }

    /// A new MLMultiArray of `shape` and `type` filled row-major (written through its strides).
    static func multiArray(_ values: TensorValues, shape: [Int], type: MLMultiArrayDataType) throws -> MLMultiArray {
        let array = try MLMultiArray(shape: shape.map { NSNumber(value: $0) }, dataType: type)
        let strides = array.strides.map { $0.intValue }
        let offsets = Self.offsets(shape: shape, strides: strides)
        switch (values, type) {
        case (.floats(let v), .float32):
            let p = array.dataPointer.bindMemory(to: Float.self, capacity: array.count)
            for (i, o) in offsets.enumerated() { p[o] = v[i] }
        case (.ints(let v), .int32):
            let p = array.dataPointer.bindMemory(to: Int32.self, capacity: array.count)
            for (i, o) in offsets.enumerated() {
                guard let value = Int32(exactly: v[i]) else { throw BundleError.invalid("\(v[i]) does not fit int32") }
                p[o] = value
            }
        case (.floats(let v), .double):
            let p = array.dataPointer.bindMemory(to: Double.self, capacity: array.count)
            for (i, o) in offsets.enumerated() { p[o] = Double(v[i]) }
        default:  // float16 and any other pairing: through NSNumber (slow, exact for these sizes)
            let flat = values.asFloats
            for (i, index) in Self.indices(shape: shape).enumerated() {
                array[index.map { NSNumber(value: $0) }] = NSNumber(value: flat[i])
            }
        }
        return array
    }

    /// The elements of any MLMultiArray as Floats in row-major order, honouring its strides.
    public static func floats(_ array: MLMultiArray) -> [Float] {
        let shape = array.shape.map { $0.intValue }
        let offsets = Self.offsets(shape: shape, strides: array.strides.map { $0.intValue })
        switch array.dataType {
        case .float32:
            let p = array.dataPointer.bindMemory(to: Float.self, capacity: (offsets.max() ?? 0) + 1)
            return offsets.map { p[$0] }
        case .double:
            let p = array.dataPointer.bindMemory(to: Double.self, capacity: (offsets.max() ?? 0) + 1)
            return offsets.map { Float(p[$0]) }
        case .int32:
            let p = array.dataPointer.bindMemory(to: Int32.self, capacity: (offsets.max() ?? 0) + 1)
            return offsets.map { Float(p[$0]) }
        default:
            return Self.indices(shape: shape).map { array[$0.map { NSNumber(value: $0) }].floatValue }
        }
    }

    static func indices(shape: [Int]) -> [[Int]] {
        var result: [[Int]] = [[]]
        for size in shape {
            result = result.flatMap { prefix in (0..<size).map { prefix + [$0] } }
        }
        return result
    }

    static func offsets(shape: [Int], strides: [Int]) -> [Int] {
        indices(shape: shape).map { index in zip(index, strides).reduce(0) { $0 + $1.0 * $1.1 } }
    }
}
