package org.cdx.androiddemo.core

/** A bundle problem the user can act on (bad manifest, checksum mismatch, path escaping the bundle, ...). */
class BundleError(message: String) : Exception(message)

enum class DType(val jsonName: String, val bytes: Int) {
    FLOAT32("float32", 4), FLOAT16("float16", 2), INT32("int32", 4), INT64("int64", 8);

    companion object {
        fun of(name: String, where: String): DType =
            values().firstOrNull { it.jsonName == name } ?: throw BundleError("$where: unsupported dtype '$name'")
    }
}

/** One entry of a model's `inputs[]` / `outputs[]` (the I/O contract; cdx/schemas/manifest.schema.json $defs.tensor). */
class TensorSpec(val name: String, val shape: IntArray, val dtype: DType, val range: List<Double>?, val description: String?) {
    val count: Int get() = shape.fold(1) { a, b -> a * b }

    companion object {
        fun from(o: JsonObject) = TensorSpec(
            name = o.string("name"),
            shape = o.longs("shape").map { it.toInt() }.toIntArray(),
            dtype = DType.of(o.string("dtype"), o.where),
            range = o.doublesOrNull("range"),
            description = o.stringOrNull("description"),
        )
    }
}

/** `models[].golden`: seeded inputs and the float model's outputs, all seeds stacked on axis 0. */
class GoldenRef(val inputs: Map<String, String>, val outputs: Map<String, String>, val seeds: List<Long>)

class ModelEntry(
    val name: String,
    val role: String,
    val target: String,
    val format: String,
    val precision: String,
    val file: String,
    val inputs: List<TensorSpec>,
    val outputs: List<TensorSpec>,
    val golden: GoldenRef?,
    val export: JsonObject?,
    /** The `tokenizer` section of a `text_encoder` model (prompt → input_ids, see [ClipTokenizer]); null otherwise. */
    val tokenizer: JsonObject? = null,
    /** `golden.prompts`: the prompt of each golden sample (text students), empty otherwise. */
    val goldenPrompts: List<String> = emptyList(),
) {
    /** The Android runtime that runs this artifact, or null (Core ML, or a Core ML-delegated .pte). */
    val runtime: String?
        get() = when {
            format == "pte" && delegate == "coreml" -> null
            format == "pte" -> "executorch"
            format == "ort" || format == "onnx" -> "onnxruntime"
            else -> null
        }

    /** The ExecuTorch delegate baked into a .pte at export ("xnnpack", ...), null for other formats. */
    val delegate: String? get() = export?.stringOrNull("delegate")

    /** Why this model cannot run in the Android app, or null when it can. */
    val whyNotRunnable: String?
        get() = when {
            runtime != null -> null
            format == "pte" -> "Core ML-delegated .pte runs only on Apple devices"
            else -> "format '$format' has no Android runtime"
        }
}

class Conditioning(
    val type: String,
    val numClasses: Int?,
    val classNames: List<String>,
    val guidanceDefault: Double?,
    val guidanceRange: List<Double>?,
)

/** The parts of manifest.json the app uses; everything it needs about I/O comes from here, nothing is hard-coded. */
class Manifest(
    val version: String,
    val sourceWeightsSha256: String,
    val sourceName: String?,
    val conditioning: Conditioning,
    val firstStep: Map<String, Double>,
    val rngName: String?,
    val models: List<ModelEntry>,
    val files: List<FileEntry>,
) {
    class FileEntry(val path: String, val sha256: String, val sizeBytes: Long)

    /** The models a user picks to generate images (text encoders run inside a prompt's path, not on their own). */
    val generators: List<ModelEntry> get() = models.filter { it.role == "generator" }

    /** The text encoder that runs [generator]'s `text_embedding` from a prompt: same target, preferring fp32. */
    fun textEncoderFor(generator: ModelEntry): ModelEntry? {
        if (generator.inputs.none { it.name == SeededInputs.TEXT_INPUT }) return null
        val encoders = models.filter { it.role == "text_encoder" && it.tokenizer != null && it.whyNotRunnable == null }
        return encoders.firstOrNull { it.target == generator.target && it.precision == "fp32" }
            ?: encoders.firstOrNull { it.target == generator.target } ?: encoders.firstOrNull()
    }

    fun model(name: String): ModelEntry =
        models.firstOrNull { it.name == name } ?: throw BundleError("no model '$name' in the manifest (${models.joinToString { it.name }})")

    companion object {
        const val FILE_NAME = "manifest.json"
        const val RNG_NAME = "cdx-normal-v1"

        fun parse(text: String): Manifest {
            val root = JsonObject.parse(text, "manifest.json")
            val version = root.string("manifest_version")
            if (version.substringBefore('.') != "1") throw BundleError("manifest_version $version is not supported (this app reads 1.x)")
            val cond = root.obj("conditioning")
            val guidance = cond.objOrNull("guidance")
            val conditioning = Conditioning(
                type = cond.string("type"),
                numClasses = if (cond.has("num_classes")) cond.long("num_classes").toInt() else null,
                classNames = cond.listOrNull("class_names")?.map { it.toString() } ?: emptyList(),
                guidanceDefault = guidance?.doubleOrNull("default"),
                guidanceRange = guidance?.doublesOrNull("range"),
            )
            val steps = root.obj("schedule").objects("steps")
            val firstStep = steps.first().map.mapNotNull { (k, v) -> (v as? Number)?.let { k to it.toDouble() } }.toMap()
            val models = root.objects("models").map { m ->
                val g = m.objOrNull("golden")
                ModelEntry(
                    name = m.string("name"), role = m.string("role"), target = m.string("target"),
                    format = m.string("format"), precision = m.string("precision"),
                    file = checkRelPath(m.string("file"), "${m.where}.file"),
                    inputs = m.objects("inputs").map(TensorSpec::from),
                    outputs = m.objects("outputs").map(TensorSpec::from),
                    golden = g?.let {
                        GoldenRef(
                            inputs = it.obj("inputs").map.mapValues { (k, v) -> checkRelPath(v.toString(), "${it.where}.inputs.$k") },
                            outputs = it.obj("outputs").map.mapValues { (k, v) -> checkRelPath(v.toString(), "${it.where}.outputs.$k") },
                            seeds = it.listOrNull("seeds")?.map { s -> (s as Number).toLong() } ?: emptyList(),
                        )
                    },
                    export = m.objOrNull("export"),
                    tokenizer = m.objOrNull("tokenizer"),
                    goldenPrompts = g?.listOrNull("prompts")?.map { it.toString() } ?: emptyList(),
                )
            }
            val files = root.objects("files").map {
                FileEntry(checkRelPath(it.string("path"), "${it.where}.path"), it.string("sha256").lowercase(), it.long("size_bytes"))
            }
            val source = root.obj("source")
            return Manifest(version, source.string("weights_sha256"), source.stringOrNull("name"), conditioning, firstStep,
                root.objOrNull("rng")?.stringOrNull("name"), models, files)
        }

        /** A manifest path must stay inside the bundle: relative, no `..` segment, no backslash or drive tricks. */
        fun checkRelPath(path: String, where: String): String {
            val bad = path.isEmpty() || path.startsWith("/") || path.contains('\\') || path.contains('\u0000') ||
                (path.length > 1 && path[1] == ':') || path.split('/').any { it == ".." }
            if (bad) throw BundleError("$where: path '$path' escapes the bundle")
            return path
        }
    }
}
