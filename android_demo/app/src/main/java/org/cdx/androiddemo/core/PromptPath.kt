package org.cdx.androiddemo.core

/**
 * The path a typed prompt takes to a text student, all from the manifest: prompt --[ClipTokenizer] (the text
 * encoder's `tokenizer` section and its files)--> input_ids --text_encoder model--> text_embedding --> generator.
 */
class PromptPath(private val bundle: Bundle, val encoder: ModelEntry) {
    val tokenizer: ClipTokenizer
    private val idsSpec: TensorSpec = encoder.inputs.singleOrNull()
        ?: throw BundleError("${encoder.name}: a text encoder takes one input (input_ids), the manifest lists ${encoder.inputs.size}")
    val outputName: String = encoder.outputs.firstOrNull()?.name ?: throw BundleError("${encoder.name}: no outputs")

    init {
        val section = encoder.tokenizer ?: throw BundleError("${encoder.name}: no tokenizer section in the manifest")
        val files = section.obj("files")
        val paths = listOf(files.string("vocab"), files.string("merges"))
        bundle.verify(paths)  // sha256 + size against files[] before the app trusts them
        tokenizer = ClipTokenizer(section, bundle.resolve(paths[0]).readText(), bundle.resolve(paths[1]).readText())
        if (idsSpec.count != tokenizer.maxLength) {
            throw BundleError("${encoder.name}: input ${idsSpec.name} has ${idsSpec.count} values, tokenizer max_length ${tokenizer.maxLength}")
        }
    }

    /** The text encoder's input for [prompt], in the manifest's dtype (int64; int32 where a spec says so). */
    fun inputIds(prompt: String): HostTensor {
        val ids = tokenizer.encode(prompt)
        return when (idsSpec.dtype) {
            DType.INT64 -> HostTensor(idsSpec.name, idsSpec.dtype, idsSpec.shape, LongArray(ids.size) { ids[it].toLong() })
            DType.INT32 -> HostTensor(idsSpec.name, idsSpec.dtype, idsSpec.shape, ids.copyOf())
            else -> throw BundleError("${encoder.name}: input ${idsSpec.name} is ${idsSpec.dtype.jsonName}, not an integer type")
        }
    }

    /** text_embedding of [prompt] from an open runner of [encoder]. */
    fun embed(runner: ModelRunner, prompt: String): HostTensor =
        runner.run(listOf(inputIds(prompt)))[outputName] ?: throw BundleError("${encoder.name}: the runtime returned no '$outputName'")

    /** Where this tokenizer disagrees with the bundle's own vectors.json (written by the student's HF tokenizer). */
    fun vectorMismatches(): List<String> {
        val rel = encoder.tokenizer!!.obj("files").string("vectors")
        bundle.verify(listOf(rel))
        val cases = Json.parse(bundle.resolve(rel).readText()) as? List<*> ?: throw BundleError("$rel: not a JSON array")
        return cases.mapIndexedNotNull { i, c ->
            val case = JsonObject(c as? Map<String, Any?> ?: throw BundleError("$rel[$i]: not an object"), "$rel[$i]")
            val want = case.longs("input_ids").map { it.toInt() }
            val got = tokenizer.encode(case.string("text")).toList()
            if (got == want) null else "'${case.string("text")}': $got, expected $want"
        }
    }
}
