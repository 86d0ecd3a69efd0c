package org.cdx.androiddemo

import org.cdx.androiddemo.core.Benchmark
import org.cdx.androiddemo.core.Bundle
import org.cdx.androiddemo.core.BundleError
import org.cdx.androiddemo.core.CdxNormal
import org.cdx.androiddemo.core.ClipTokenizer
import org.cdx.androiddemo.core.DeviceInfo
import org.cdx.androiddemo.core.DeviceResults
import org.cdx.androiddemo.core.GoldenComparison
import org.cdx.androiddemo.core.GoldenSet
import org.cdx.androiddemo.core.HostTensor
import org.cdx.androiddemo.core.Images
import org.cdx.androiddemo.core.Json
import org.cdx.androiddemo.core.JsonObject
import org.cdx.androiddemo.core.LatencyStats
import org.cdx.androiddemo.core.Manifest
import org.cdx.androiddemo.core.ModelEntry
import org.cdx.androiddemo.core.ModelResult
import org.cdx.androiddemo.core.ModelRunner
import org.cdx.androiddemo.core.PromptPath
import org.cdx.androiddemo.core.SeededInputs
import org.cdx.androiddemo.core.TensorSpec
import java.io.File
import java.nio.file.Files
import kotlin.system.exitProcess

/**
 * The JVM check of the app's pure-Kotlin core (run by android_demo/check.sh --test; driven by tests/test_android_demo.py).
 *
 * No inference runs here: a [ReplayRunner] stands in for ONNX Runtime / ExecuTorch and returns outputs that Python's
 * runtime computed on the golden inputs (--replay DIR, written by android_demo/replay_outputs.py), so bundle parsing,
 * checksums, seeded inputs, the benchmark loop, golden comparison and the results writer are the code the phone runs,
 * on real data. The results file it writes is labelled as a JVM replay: its latencies time a table lookup, not a model.
 */
private var failures = 0

private fun check(name: String, ok: Boolean, detail: () -> String = { "" }) {
    if (ok) println("PASS $name") else { failures++; println("FAIL $name ${detail()}") }
}

private inline fun <reified E : Throwable> expectThrows(name: String, messagePart: String, block: () -> Unit) {
    try {
        block(); check(name, false) { "nothing was thrown" }
    } catch (e: Throwable) {
        check(name, e is E && (e.message ?: "").contains(messagePart)) { "got ${e::class.java.simpleName}: ${e.message}" }
    }
}

private fun rngVectors(path: File) {
    val doc = JsonObject.parse(path.readText(), path.name)
    check("rng name", doc.string("name") == CdxNormal.NAME)
    for (pair in doc.list("mix32")) {
        val (x, y) = (pair as List<*>).map { (it as Number).toLong() }
        check("mix32($x)", (CdxNormal.mix32(x.toInt()).toLong() and 0xFFFFFFFFL) == y)
    }
    for (case in doc.objects("cases")) {
        val seed = case.long("seed"); val stream = case.long("stream").toInt()
        val key = CdxNormal.streamKey(seed, stream)
        check("key seed=$seed stream=$stream", (key.toLong() and 0xFFFFFFFFL) == case.long("key"))
        val a = case.longs("a"); val b = case.longs("b")
        val draws = a.indices.map { CdxNormal.draws(key, it) }
        check("draws seed=$seed stream=$stream",
            draws.map { it.first.toLong() and 0xFFFFFFFFL } == a && draws.map { it.second.toLong() and 0xFFFFFFFFL } == b)
        val bits = case.longs("float32_bits")
        val ours = CdxNormal.normal(seed, bits.size, stream).map { java.lang.Float.floatToRawIntBits(it).toLong() and 0xFFFFFFFFL }
        val bad = ours.indices.filter { ours[it] != bits[it] }
        check("normal seed=$seed stream=$stream bit-for-bit (${bits.size} values)", bad.isEmpty()) { "elements $bad differ" }
    }
}

/** The Kotlin CLIP tokenizer against tests/data/tokenizer_vectors.json (transformers' ids, byte-level and merges sets). */
private fun tokenizerVectors(path: File) {
    val doc = JsonObject.parse(path.readText(), path.name)
    check("tokenizer vectors are cdx-clip-bpe-v1", doc.string("name") == "cdx-clip-bpe-v1")
    val sets = doc.objects("sets")
    check("tokenizer vector sets present (${sets.size})", sets.isNotEmpty())
    for (set in sets) {
        val tokenizer = ClipTokenizer(set.obj("tokenizer"), set.string("vocab_json"), set.string("merges_txt"))
        val cases = set.objects("cases")
        val bad = cases.filter { c ->
            tokenizer.tokenize(c.string("text")) != c.strings("tokens") ||
                tokenizer.encode(c.string("text")).map { it.toLong() } != c.longs("input_ids")
        }
        check("tokenizer ${set.string("name")}: ${cases.size} texts → transformers' BPE symbols and input_ids", bad.isEmpty()) {
            bad.joinToString("; ") { c -> "'${c.string("text")}' → ${tokenizer.tokenize(c.string("text"))} " +
                "${tokenizer.encode(c.string("text")).toList()}, expected ${c.longs("input_ids")}" }
        }
    }
}

/** A text student's prompt path: the bundle's tokenizer reproduces its own vectors.json and the golden input_ids. */
private fun promptPath(bundle: Bundle, model: ModelEntry) {
    val path = PromptPath(bundle, model)
    val bad = path.vectorMismatches()
    check("${model.name}: tokenizer from the manifest reproduces the bundle's vectors.json", bad.isEmpty()) { bad.joinToString("; ") }
    check("${model.name}: golden.prompts tokenized here = the golden input_ids bit for bit (${model.goldenPrompts.size} prompts)",
        model.goldenPrompts.isNotEmpty() && Benchmark(bundle, model).seededInputsReproduceGolden() == true)
}

private fun jsonAndStats() {
    val text = """{"a": [1, 2.5, -3e-2, true, null, "x\"\u00e9\n"], "b": {}, "c": []}"""
    val parsed = Json.parse(text)
    check("json round trip", Json.parse(Json.write(parsed)) == parsed && Json.parse(Json.write(parsed, 0)) == parsed)
    // numpy.percentile([1..10], [50, 90, 99]) = 5.5, 9.1, 9.91
    val s = LatencyStats.of((10 downTo 1).map { it.toDouble() })
    check("latency stats = numpy linear percentiles",
        s.medianMs == 5.5 && Math.abs(s.p90Ms - 9.1) < 1e-12 && Math.abs(s.p99Ms - 9.91) < 1e-12 && s.minMs == 1.0 && s.maxMs == 10.0)
    check("float16 round trip", listOf(0f, 1f, -2.5f, 65504f, 6.1035156e-05f, 5.9604645e-08f, 0.1f).all {
        Math.abs(HostTensor.halfToFloat(HostTensor.floatToHalf(it)) - it) <= Math.abs(it) / 1024f + 1e-9f
    })
}

private fun pathSafety(bundleDir: File, scratch: File) {
    expectThrows<BundleError>("manifest path '../x' refused", "escapes the bundle") { Manifest.checkRelPath("../x", "t") }
    expectThrows<BundleError>("manifest path '/etc/passwd' refused", "escapes the bundle") { Manifest.checkRelPath("/etc/passwd", "t") }
    expectThrows<BundleError>("manifest path 'a/../../b' refused", "escapes the bundle") { Manifest.checkRelPath("a/../../b", "t") }
    // A symlink inside the bundle that points out of it is refused too. Its target is a throwaway folder inside
    // [scratch] (NEVER a system folder): the cleanup below removes links without following them, but stay safe anyway.
    val copy = File(scratch, "symlinked").apply { mkdirs() }
    val elsewhere = File(scratch, "elsewhere").apply { mkdirs() }
    File(elsewhere, "secret.txt").writeText("outside the bundle")
    File(bundleDir, "manifest.json").copyTo(File(copy, "manifest.json"), overwrite = true)
    Files.createSymbolicLink(File(copy, "outside").toPath(), elsewhere.toPath())
    val b = Bundle.open(copy)
    expectThrows<BundleError>("symlink escaping the bundle refused", "outside the bundle") { b.resolve("outside/secret.txt") }
}

private fun tamperedBundle(bundleDir: File, scratch: File, model: ModelEntry) {
    val copy = File(scratch, "tampered").apply { mkdirs() }
    val b = Bundle.open(bundleDir)
    for (rel in listOf("manifest.json") + b.filesOf(model)) {
        val dst = File(copy, rel); dst.parentFile.mkdirs(); File(bundleDir, rel).copyTo(dst, overwrite = true)
    }
    val goldenOut = File(copy, model.golden!!.outputs.values.first())
    val bytes = goldenOut.readBytes(); bytes[bytes.size / 2] = (bytes[bytes.size / 2].toInt() xor 1).toByte(); goldenOut.writeBytes(bytes)
    expectThrows<BundleError>("tampered golden file refused", "sha256 mismatch") { Bundle.open(copy).verify(b.filesOf(model)) }
    File(copy, model.file).delete()
    expectThrows<BundleError>("missing artifact refused", "missing") { Bundle.open(copy).verify(listOf(model.file)) }
}

/** Stands in for a runtime: returns the outputs another runtime produced for the golden input it is given. */
private class ReplayRunner(private val model: ModelEntry, golden: GoldenSet, replay: Map<String, HostTensor>) : ModelRunner {
    override val runtime = model.runtime ?: "onnxruntime"
    override val backend = "jvm-replay"
    override val threads: Int? = 1
    private val keys = golden.inputs.map { sample -> sample.map { it.toLittleEndianBytes().toList() } }
    private val outputs = replay.mapValues { (name, t) ->
        val spec = model.outputs.first { it.name == name }
        (0 until golden.samples).map { t.slice(it, golden.samples, spec.shape) }
    }

    override fun run(inputs: List<HostTensor>): Map<String, HostTensor> {
        val key = inputs.map { it.toLittleEndianBytes().toList() }
        val index = keys.indexOf(key)
        if (index < 0) throw IllegalStateException("replay: input is not one of the golden samples")
        return outputs.mapValues { it.value[index] }
    }

    override fun close() {}
}

private fun bundleChecks(bundleDir: File, replayDir: File?, scratch: File): List<ModelResult> {
    val bundle = Bundle.open(bundleDir)
    val manifest = bundle.manifest
    check("manifest parsed (${manifest.models.size} models, ${manifest.files.size} files)", manifest.models.isNotEmpty())
    check("manifest rng is ${Manifest.RNG_NAME}", manifest.rngName == null || manifest.rngName == Manifest.RNG_NAME)
    val verified = bundle.verify()
    check("sha256 + size of all $verified files match the manifest", verified == manifest.files.size)
    val names = manifest.conditioning.classNames
    check("class names read (${names.size})", manifest.conditioning.type != "class_label" || names.size == manifest.conditioning.numClasses)
    val runnable = manifest.models.filter { it.whyNotRunnable == null }
    check("at least one model runs on Android", runnable.isNotEmpty())
    tamperedBundle(bundleDir, scratch, runnable.first())
    pathSafety(bundleDir, scratch)

    val results = ArrayList<ModelResult>()
    for (model in runnable) {
        val golden = GoldenSet.load(bundle, model)
        val seeds = model.golden!!.seeds
        check("${model.name}: ${golden.samples} golden samples for seeds $seeds", golden.samples == seeds.size && golden.samples > 0)
        val bench = Benchmark(bundle, model)
        if (model.role == "text_encoder") promptPath(bundle, model)
        else check("${model.name}: seed → cdx-normal-v1 + manifest rules reproduce the golden inputs bit for bit",
            bench.seededInputsReproduceGolden(golden) == true)
        val spec = model.outputs.first()
        val expected = golden.outputs.getValue(spec.name)
        val perSample = (0 until golden.samples).map { expected.slice(it, golden.samples, spec.shape) }
        val same = GoldenComparison.compare(spec, expected, perSample)
        check("${model.name}: identical outputs → max_abs 0, PSNR capped", same.maxAbs == 0.0 && same.psnrDb == GoldenComparison.PSNR_CAP_DB)
        val shifted = perSample.map { t -> HostTensor(t.name, t.dtype, t.shape, FloatArray(t.count) { (t.get(it) + 0.01).toFloat() }) }
        val off = GoldenComparison.compare(spec, expected, shifted)
        if (model.role == "generator") {
            check("${model.name}: +0.01 everywhere → PSNR ≈ 40 dB on a [0,1] range",
                Math.abs(off.maxAbs - 0.01) < 1e-5 && Math.abs(off.psnrDb - 40.0) < 0.01) { "max_abs ${off.maxAbs} psnr ${off.psnrDb}" }
        }

        if (model.role == "generator") imageCheck(model, expected, golden.samples)

        if (replayDir != null) {
            val files = model.outputs.associate { o -> o.name to File(replayDir, "${model.name}.${o.name}.bin") }
            if (!files.values.all { it.isFile }) {
                println("SKIP ${model.name}: no replayed outputs in $replayDir (Python could not run it)")
                continue
            }
            val replay = model.outputs.associate { o -> o.name to HostTensor.read(o, files.getValue(o.name)).first }
            val result = bench.run({ ReplayRunner(model, golden, replay) }, warmup = 2, runs = 10)
            val g = result.golden!!
            check("${model.name}: benchmark loop on replayed ${model.runtime} outputs: max_abs ${"%.3g".format(g.maxAbs)}, " +
                "PSNR ${"%.1f".format(g.psnrDb)} dB over ${g.samples} samples", g.maxAbs <= 1e-4 && g.samples == golden.samples)
            results.add(result)
        }
    }
    return results
}

/** The pixels the app would draw for golden sample 0: declared range → 0..255, and min..max when no range is declared. */
private fun imageCheck(model: ModelEntry, stacked: HostTensor, samples: Int) {
    val spec = model.outputs.first()
    val why = Images.whyNotDrawable(spec)
    if (why != null) { println("SKIP ${model.name}: image not drawn ($why)"); return }
    val sample = stacked.slice(0, samples, spec.shape)
    val img = Images.toArgb(spec, sample)
    check("${model.name}: image ${img.width}x${img.height} from ${spec.shape.contentToString()}",
        img.width == spec.shape[3] && img.height == spec.shape[2] && img.pixels.size == img.width * img.height)
    val lo = spec.range?.get(0) ?: 0.0; val hi = spec.range?.get(1) ?: 1.0
    val grey = spec.shape[1] == 1
    val ok = (0 until img.pixels.size).all { p ->
        val px = img.pixels[p]
        val want = Math.round(Math.max(0.0, Math.min(1.0, (sample.get(p) - lo) / (hi - lo))) * 255.0).toInt()
        (px ushr 24) == 0xFF && ((px shr 16) and 0xFF) == want && (!grey || ((px and 0xFF) == want && ((px shr 8) and 0xFF) == want))
    }
    check("${model.name}: pixels = clamp((v - lo) / (hi - lo)) * 255, alpha 255", spec.range == null || ok)
    val unranged = TensorSpec(spec.name, spec.shape, spec.dtype, null, null)
    val stretched = Images.toArgb(unranged, sample).pixels.map { (it shr 16) and 0xFF }
    check("${model.name}: without a declared range, min..max → 0..255", stretched.minOrNull() == 0 && stretched.maxOrNull() == 255)
    expectThrows<BundleError>("latent-shaped output [1, 4, 8, 8] is not drawn", "channels") {
        Images.toArgb(TensorSpec("x", intArrayOf(1, 4, 8, 8), spec.dtype, null, null), sample)
    }
}

/**
 * Delete a folder tree WITHOUT following symbolic links. Kotlin's File.deleteRecursively() descends into a symlink
 * that points to a directory and deletes the target's contents; never use it on a tree that may hold links.
 */
private fun deleteWithoutFollowingLinks(root: File) {
    val path = root.toPath()
    if (!Files.exists(path, java.nio.file.LinkOption.NOFOLLOW_LINKS)) return
    Files.walkFileTree(path, object : java.nio.file.SimpleFileVisitor<java.nio.file.Path>() {
        override fun visitFile(file: java.nio.file.Path, attrs: java.nio.file.attribute.BasicFileAttributes):
            java.nio.file.FileVisitResult { Files.delete(file); return java.nio.file.FileVisitResult.CONTINUE }
        override fun postVisitDirectory(dir: java.nio.file.Path, exc: java.io.IOException?):
            java.nio.file.FileVisitResult { Files.delete(dir); return java.nio.file.FileVisitResult.CONTINUE }
    })
}

fun main(args: Array<String>) {
    val opts = HashMap<String, String>()
    var i = 0
    while (i < args.size) {
        require(args[i].startsWith("--") && i + 1 < args.size) { "usage: --rng FILE [--tokenizer FILE] [--bundle DIR --out FILE [--replay DIR]]" }
        opts[args[i].removePrefix("--")] = args[i + 1]; i += 2
    }
    opts["rng"]?.let { rngVectors(File(it)) }
    opts["tokenizer"]?.let { tokenizerVectors(File(it)) }
    jsonAndStats()
    val bundleDir = opts["bundle"]?.let(::File)
    if (bundleDir != null) {
        val scratch = Files.createTempDirectory("cdx-android-check").toFile()
        try {
            val replay = opts["replay"]?.let(::File)
            val results = bundleChecks(bundleDir, replay, scratch)
            val out = opts["out"]?.let(::File)
            if (out != null) {
                check("results to write (--replay DIR with the outputs of at least one model)", results.isNotEmpty())
                if (results.isNotEmpty()) {
                    val device = DeviceInfo(
                        model = "JVM core check, NOT a device run (no inference: outputs replayed from Python, " +
                            "latencies time a lookup)",
                        os = System.getProperty("os.name") ?: "unknown", osVersion = System.getProperty("os.version"),
                        soc = null, abi = System.getProperty("os.arch"), ramGb = null)
                    val doc = DeviceResults.document(Bundle.open(bundleDir), device, "cdx android_demo check.sh (JVM replay)",
                        "0.1.0", results)
                    DeviceResults.write(doc, out)
                    check("results JSON written to $out", out.isFile && Json.parse(out.readText()) == Json.parse(Json.write(doc)))
                }
            }
        } finally {
            deleteWithoutFollowingLinks(scratch)
        }
    }
    println(if (failures == 0) "ALL PASSED" else "$failures FAILED")
    exitProcess(if (failures == 0) 0 else 1)
}
