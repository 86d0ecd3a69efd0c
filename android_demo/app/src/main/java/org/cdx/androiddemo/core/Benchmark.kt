package org.cdx.androiddemo.core

/** What the ONNX Runtime and ExecuTorch wrappers implement: inputs in the manifest's order → outputs by name. */
interface ModelRunner : AutoCloseable {
    /** "executorch" or "onnxruntime" (the device-results schema's runtime). */
    val runtime: String

    /** "xnnpack", "cpu", "nnapi", ... */
    val backend: String

    val threads: Int?

    fun run(inputs: List<HostTensor>): Map<String, HostTensor>
}

/** One row of `results[]` in a cdx-device-results/1 file. */
class ModelResult(
    val model: String,
    val runtime: String,
    val backend: String,
    val threads: Int?,
    val coldLoadMs: Double,
    val firstRunMs: Double,
    val latency: LatencyStats,
    val golden: GoldenComparison?,
    val inputsMatchSeeds: Boolean?,
) {
    fun toJson(): Map<String, Any> {
        val row = linkedMapOf<String, Any>("model" to model, "runtime" to runtime, "backend" to backend)
        threads?.let { row["threads"] = it }
        row["cold_load_ms"] = coldLoadMs
        row["first_run_ms"] = firstRunMs
        row["latency"] = latency.toJson()
        golden?.let { row["golden"] = linkedMapOf("samples" to it.samples, "max_abs" to it.maxAbs, "psnr_db" to it.psnrDb) }
        return row
    }
}

/**
 * The benchmark of `cdx bench device --local`, for one model: open (cold load), run every golden sample once (the first
 * run is timed alone), [warmup] untimed runs, then [runs] timed runs of sample 0; outputs are compared with the golden
 * outputs. [clockNanos] is injectable so the JVM check can drive it; the app passes System.nanoTime.
 */
class Benchmark(private val bundle: Bundle, private val model: ModelEntry, private val clockNanos: () -> Long = System::nanoTime) {

    fun run(open: () -> ModelRunner, warmup: Int, runs: Int, progress: (String) -> Unit = {}): ModelResult {
        require(runs >= 1 && warmup >= 0) { "runs must be >= 1 and warmup >= 0" }
        val golden = GoldenSet.load(bundle, model)
        val inputsMatchSeeds = seededInputsReproduceGolden(golden)
        var t = clockNanos()
        val runner = open()
        runner.use {
            val coldLoadMs = ms(t)
            t = clockNanos()
            val outputs = ArrayList<Map<String, HostTensor>>()
            outputs.add(runner.run(golden.inputs[0]))
            val firstRunMs = ms(t)
            for (i in 1 until golden.samples) outputs.add(runner.run(golden.inputs[i]))
            progress("golden: ${golden.samples} samples run")
            repeat(warmup) { runner.run(golden.inputs[0]) }
            val timings = ArrayList<Double>(runs)
            repeat(runs) { k ->
                t = clockNanos()
                runner.run(golden.inputs[0])
                timings.add(ms(t))
                if ((k + 1) % 10 == 0) progress("timed ${k + 1}/$runs")
            }
            val spec = model.outputs.first { golden.outputs.containsKey(it.name) }
            val actual = outputs.map { it[spec.name] ?: throw BundleError("runtime returned no output '${spec.name}'") }
            val comparison = GoldenComparison.compare(spec, golden.outputs.getValue(spec.name), actual)
            return ModelResult(model.name, runner.runtime, runner.backend, runner.threads, coldLoadMs, firstRunMs,
                LatencyStats.of(timings), comparison, inputsMatchSeeds)
        }
    }

    /** Whether cdx-normal-v1 + the manifest's rules regenerate the golden inputs bit for bit (null: no seeds listed). */
    fun seededInputsReproduceGolden(golden: GoldenSet = GoldenSet.load(bundle, model)): Boolean? {
        if (golden.seeds.isEmpty()) return null
        if (model.role == "text_encoder") {  // golden sample i = the tokenizer on golden.prompts[i]
            if (model.goldenPrompts.size != golden.samples) return null
            val path = PromptPath(bundle, model)
            return model.goldenPrompts.withIndex().all { (i, prompt) ->
                path.inputIds(prompt).toLittleEndianBytes().contentEquals(golden.inputs[i][0].toLittleEndianBytes())
            }
        }
        // a text student's golden text_embedding for seed i = its text encoder's golden output for prompt i % n
        val encoder = bundle.manifest.textEncoderFor(model)
        val encoderGolden = encoder?.let { GoldenSet.load(bundle, it) }
        return golden.seeds.withIndex().all { (i, seed) ->
            val text = if (encoder != null && encoderGolden != null) {
                val spec = encoder.outputs.first()
                encoderGolden.outputs.getValue(spec.name).slice(i % encoderGolden.samples, encoderGolden.samples, spec.shape)
            } else null
            val ours = SeededInputs.build(bundle.manifest, model, seed, SeededInputs.goldenClassLabel(bundle.manifest, i), null, text)
            ours.zip(golden.inputs[i]).all { (a, b) -> a.toLittleEndianBytes().contentEquals(b.toLittleEndianBytes()) }
        }
    }

    private fun ms(startNanos: Long): Double = (clockNanos() - startNanos) / 1e6
}
