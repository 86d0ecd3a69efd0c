package org.cdx.androiddemo.ui

import android.app.Activity
import android.app.ActivityManager
import android.content.Context
import android.graphics.Bitmap
import android.graphics.Color
import android.os.Build
import android.os.Bundle as AndroidBundle
import android.os.Handler
import android.os.Looper
import android.text.InputType
import android.view.View
import android.view.ViewGroup
import android.widget.AdapterView
import android.widget.ArrayAdapter
import android.widget.Button
import android.widget.EditText
import android.widget.ImageView
import android.widget.LinearLayout
import android.widget.ScrollView
import android.widget.Spinner
import android.widget.TextView
import org.cdx.androiddemo.core.Benchmark
import org.cdx.androiddemo.core.Bundle
import org.cdx.androiddemo.core.DeviceInfo
import org.cdx.androiddemo.core.DeviceResults
import org.cdx.androiddemo.core.Images
import org.cdx.androiddemo.core.ModelEntry
import org.cdx.androiddemo.core.ModelResult
import org.cdx.androiddemo.core.ModelRunner
import org.cdx.androiddemo.core.PromptPath
import org.cdx.androiddemo.core.SeededInputs
import org.cdx.androiddemo.runtime.Runners
import java.io.File
import java.text.SimpleDateFormat
import java.util.Date
import java.util.Locale
import java.util.concurrent.ExecutorService
import java.util.concurrent.Executors

/**
 * One screen, plain android.widget views (no AndroidX, so `check.sh --typecheck` covers it against android.jar):
 *
 * - the bundle is read from app storage: `<external files dir>/bundle/manifest.json` (README: `adb push`);
 * - model (→ runtime: .pte = ExecuTorch, .ort/.onnx = ONNX Runtime), backend, class (the manifest's class names), seed,
 *   guidance, threads; "Generate" runs one seeded sample and shows the image and its latency;
 * - a text student takes a typed prompt instead of a class: [PromptPath] tokenizes it (ClipTokenizer, from the text
 *   encoder's manifest `tokenizer` section and files), runs the bundle's text_encoder model on the same runtime and
 *   feeds its text_embedding to the generator;
 * - "Benchmark" runs the golden samples + timed runs of every Android-runnable model and writes a cdx-device-results/1
 *   file to `<external files dir>/results/` for `cdx bench ingest`.
 *
 * Automation: `adb shell am start -n org.cdx.androiddemo/.ui.MainActivity --ez benchmark true [--ei runs 20 --ei warmup 3]`.
 */
class MainActivity : Activity() {
    private val worker: ExecutorService = Executors.newSingleThreadExecutor()
    private val main = Handler(Looper.getMainLooper())

    private lateinit var status: TextView
    private lateinit var modelPicker: Spinner
    private lateinit var backendPicker: Spinner
    private lateinit var classPicker: Spinner
    private lateinit var promptField: EditText
    private lateinit var seedField: EditText
    private lateinit var guidanceField: EditText
    private lateinit var threadsField: EditText
    private lateinit var runsField: EditText
    private lateinit var generateButton: Button
    private lateinit var benchmarkButton: Button
    private lateinit var image: ImageView
    private lateinit var log: TextView

    private var bundle: Bundle? = null
    private var models: List<ModelEntry> = emptyList()

    // Touched on the worker thread only.
    private var openRunner: ModelRunner? = null
    private var openKey: String? = null
    private var encoderRunner: ModelRunner? = null
    private var encoderKey: String? = null
    private var promptPath: PromptPath? = null
    private var verified = false

    private val bundleDir: File get() = File(getExternalFilesDir(null) ?: filesDir, "bundle")
    private val resultsDir: File get() = File(getExternalFilesDir(null) ?: filesDir, "results")

    override fun onCreate(savedInstanceState: AndroidBundle?) {
        super.onCreate(savedInstanceState)
        buildViews()
        loadBundle()
        val extras = intent?.extras
        if (extras != null && extras.getBoolean("benchmark", false) && bundle != null) {
            runsField.setText(extras.getInt("runs", 20).toString())
            benchmark(warmup = extras.getInt("warmup", 3))
        }
    }

    override fun onDestroy() {
        worker.execute { closeRunner() }
        worker.shutdown()
        super.onDestroy()
    }

    // ---- views ----------------------------------------------------------------------------------------------------

    private fun buildViews() {
        val pad = dp(12)
        val column = LinearLayout(this).apply { orientation = LinearLayout.VERTICAL; setPadding(pad, pad, pad, pad) }
        status = TextView(this).apply { textSize = 14f }
        column.addView(status)

        modelPicker = Spinner(this); backendPicker = Spinner(this); classPicker = Spinner(this)
        column.addView(labeled("Model (runtime)", modelPicker))
        column.addView(labeled("Backend", backendPicker))
        column.addView(labeled("Class", classPicker))
        promptField = EditText(this).apply {
            inputType = InputType.TYPE_CLASS_TEXT
            setSingleLine(true)
            hint = "a prompt (text students)"
        }
        column.addView(labeled("Prompt", promptField))
        seedField = numberField("0", decimal = false)
        guidanceField = numberField("", decimal = true)
        threadsField = numberField("", decimal = false).apply { hint = "runtime default" }
        runsField = numberField("20", decimal = false)
        column.addView(labeled("Seed", seedField))
        column.addView(labeled("Guidance", guidanceField))
        column.addView(labeled("Threads (ONNX Runtime)", threadsField))
        column.addView(labeled("Benchmark runs", runsField))

        val buttons = LinearLayout(this).apply { orientation = LinearLayout.HORIZONTAL }
        generateButton = Button(this).apply { text = "Generate"; setOnClickListener { generate() } }
        benchmarkButton = Button(this).apply { text = "Benchmark"; setOnClickListener { benchmark(warmup = 3) } }
        buttons.addView(generateButton, LinearLayout.LayoutParams(0, ViewGroup.LayoutParams.WRAP_CONTENT, 1f))
        buttons.addView(benchmarkButton, LinearLayout.LayoutParams(0, ViewGroup.LayoutParams.WRAP_CONTENT, 1f))
        column.addView(buttons)

        image = ImageView(this).apply {
            scaleType = ImageView.ScaleType.FIT_CENTER
            adjustViewBounds = true
            setBackgroundColor(Color.LTGRAY)
        }
        column.addView(image, LinearLayout.LayoutParams(dp(256), dp(256)))
        log = TextView(this).apply { textSize = 12f; setTextIsSelectable(true) }
        column.addView(log)

        setContentView(ScrollView(this).apply { addView(column) })

        modelPicker.onItemSelectedListener = object : AdapterView.OnItemSelectedListener {
            override fun onItemSelected(parent: AdapterView<*>?, view: View?, position: Int, id: Long) = modelChanged()
            override fun onNothingSelected(parent: AdapterView<*>?) {}
        }
    }

    private fun labeled(label: String, field: View): View = LinearLayout(this).apply {
        orientation = LinearLayout.HORIZONTAL
        addView(TextView(this@MainActivity).apply { text = label }, LinearLayout.LayoutParams(dp(140), ViewGroup.LayoutParams.WRAP_CONTENT))
        addView(field, LinearLayout.LayoutParams(0, ViewGroup.LayoutParams.WRAP_CONTENT, 1f))
    }

    private fun numberField(initial: String, decimal: Boolean): EditText = EditText(this).apply {
        setText(initial)
        inputType = InputType.TYPE_CLASS_NUMBER or (if (decimal) InputType.TYPE_NUMBER_FLAG_DECIMAL else 0)
        setSingleLine(true)
    }

    private fun dp(v: Int): Int = Math.round(v * resources.displayMetrics.density)

    private fun <T> adapter(items: List<T>): ArrayAdapter<T> =
        ArrayAdapter(this, android.R.layout.simple_spinner_item, items).apply {
            setDropDownViewResource(android.R.layout.simple_spinner_dropdown_item)
        }

    private fun say(line: String) = main.post { log.append(line + "\n") }

    private fun busy(on: Boolean) = main.post { generateButton.isEnabled = !on; benchmarkButton.isEnabled = !on }

    // ---- bundle ---------------------------------------------------------------------------------------------------

    private fun loadBundle() {
        try {
            val b = Bundle.open(bundleDir)
            bundle = b
            models = b.manifest.generators.filter { it.whyNotRunnable == null }
            val m = b.manifest
            status.text = "Bundle: ${bundleDir.path}\nsource ${m.sourceName ?: "?"} (${m.sourceWeightsSha256.take(12)}…), " +
                "manifest ${m.version}, ${models.size} of ${m.models.size} models run on Android"
            for (skipped in m.models.filter { it.whyNotRunnable != null }) say("skipped ${skipped.name}: ${skipped.whyNotRunnable}")
            modelPicker.adapter = adapter(models.map { "${it.name} (${it.runtime}, .${it.format}, ${it.precision})" })
            val names = m.conditioning.classNames.ifEmpty { (0 until (m.conditioning.numClasses ?: 1)).map { "class $it" } }
            classPicker.adapter = adapter(names.mapIndexed { i, n -> "$i: $n" })
            classPicker.isEnabled = m.conditioning.type == "class_label"
            val examples = m.models.firstOrNull { it.role == "text_encoder" }?.goldenPrompts ?: emptyList()
            if (examples.isNotEmpty()) promptField.setText(examples.first())
            guidanceField.setText(SeededInputs.defaultGuidance(m).toString())
            val range = m.conditioning.guidanceRange
            if (range != null && range.size == 2) guidanceField.hint = "${range[0]}–${range[1]}"
            if (models.isEmpty()) disable("no model of this bundle runs on Android (convert with --target executorch or onnx)")
        } catch (e: Exception) {
            disable("No bundle at ${bundleDir.path}: ${e.message}\n\nPush one (README):\n" +
                "adb push BUNDLE/. /sdcard/Android/data/$packageName/files/bundle/")
        }
    }

    private fun disable(message: String) {
        status.text = message
        generateButton.isEnabled = false
        benchmarkButton.isEnabled = false
    }

    private fun selectedModel(): ModelEntry? = models.getOrNull(modelPicker.selectedItemPosition)

    private fun modelChanged() {
        val model = selectedModel() ?: return
        backendPicker.adapter = adapter(Runners.backendsFor(model))
        guidanceField.isEnabled = model.inputs.any { it.name == "guidance_scale" }
        promptField.isEnabled = bundle?.manifest?.textEncoderFor(model) != null
        threadsField.isEnabled = model.runtime == "onnxruntime"
    }

    private fun intOrNull(field: EditText): Int? = field.text.toString().trim().toIntOrNull()

    // ---- worker-thread actions ------------------------------------------------------------------------------------

    private fun runner(b: Bundle, model: ModelEntry, backend: String, threads: Int?): ModelRunner {
        val key = "${model.name}|$backend|$threads"
        openRunner?.let { if (openKey == key) return it }
        closeRunner()
        val opened = Runners.open(b, model, backend, threads)
        openRunner = opened; openKey = key
        return opened
    }

    private fun closeRunner() {
        try { openRunner?.close() } catch (e: Exception) { say("close: ${e.message}") }
        openRunner = null; openKey = null
        try { encoderRunner?.close() } catch (e: Exception) { say("close: ${e.message}") }
        encoderRunner = null; encoderKey = null
    }

    /** The text_embedding of [prompt] for a text student (null for other models): tokenizer → text encoder. */
    private fun promptEmbedding(b: Bundle, model: ModelEntry, backend: String, threads: Int?, prompt: String): org.cdx.androiddemo.core.HostTensor? {
        val encoder = b.manifest.textEncoderFor(model) ?: return null
        val path = promptPath?.takeIf { it.encoder.name == encoder.name } ?: PromptPath(b, encoder).also { promptPath = it }
        val key = "${encoder.name}|$backend|$threads"
        val runner = encoderRunner?.takeIf { encoderKey == key } ?: run {
            try { encoderRunner?.close() } catch (e: Exception) { say("close: ${e.message}") }
            val backends = Runners.backendsFor(encoder)
            Runners.open(b, encoder, if (backend in backends) backend else backends.first(), threads).also {
                encoderRunner = it; encoderKey = key
            }
        }
        val t0 = System.nanoTime()
        val embedding = path.embed(runner, prompt)
        val ids = path.tokenizer.encode(prompt)
        say(String.format(Locale.US, "prompt \"%s\" → %d tokens %s; %s %.1f ms", prompt, path.tokenizer.tokenize(prompt).size,
            ids.joinToString(",", "[", "]"), encoder.name, (System.nanoTime() - t0) / 1e6))
        return embedding
    }

    /** sha256 + sizes of the whole bundle, once per app start (a half-pushed bundle fails here, not in the runtime). */
    private fun verifyOnce(b: Bundle) {
        if (verified) return
        say("checking sha256 of ${b.manifest.files.size} files…")
        b.verify()
        verified = true
    }

    private fun generate() {
        val b = bundle ?: return
        val model = selectedModel() ?: return
        val backend = backendPicker.selectedItem?.toString() ?: return
        val seed = seedField.text.toString().trim().toLongOrNull() ?: 0L
        val classLabel = Math.max(0, classPicker.selectedItemPosition)
        val guidance = guidanceField.text.toString().trim().toDoubleOrNull()
        val threads = intOrNull(threadsField)?.takeIf { it > 0 }
        val prompt = promptField.text.toString()
        busy(true)
        worker.execute {
            try {
                verifyOnce(b)
                val t0 = System.nanoTime()
                val r = runner(b, model, backend, threads)
                val loadMs = (System.nanoTime() - t0) / 1e6
                val text = promptEmbedding(b, model, backend, threads, prompt)
                val inputs = SeededInputs.build(b.manifest, model, seed, classLabel, guidance, text)
                val t1 = System.nanoTime()
                val outputs = r.run(inputs)
                val runMs = (System.nanoTime() - t1) / 1e6
                val spec = model.outputs.first()
                val out = outputs[spec.name] ?: throw IllegalStateException("the runtime returned no '${spec.name}'")
                val why = Images.whyNotDrawable(spec)
                val bitmap = if (why == null) {
                    val argb = Images.toArgb(spec, out)
                    val raw = Bitmap.createBitmap(argb.pixels, argb.width, argb.height, Bitmap.Config.ARGB_8888)
                    val scale = Math.max(1, 256 / Math.max(argb.width, argb.height))
                    Bitmap.createScaledBitmap(raw, argb.width * scale, argb.height * scale, false)
                } else null
                main.post { if (bitmap != null) image.setImageBitmap(bitmap) else image.setImageDrawable(null) }
                say(String.format(Locale.US, "%s seed %d class %d: %.1f ms (%s/%s)%s", model.name, seed, classLabel, runMs,
                    r.runtime, r.backend, if (loadMs > 1.0) String.format(Locale.US, ", load %.0f ms", loadMs) else ""))
                if (why != null) say("not drawn: $why")
            } catch (e: Throwable) {
                say("error: ${e.javaClass.simpleName}: ${e.message}")
            } finally {
                busy(false)
            }
        }
    }

    private fun benchmark(warmup: Int) {
        val b = bundle ?: return
        val runs = Math.max(1, intOrNull(runsField) ?: 20)
        val threads = intOrNull(threadsField)?.takeIf { it > 0 }
        busy(true)
        worker.execute {
            try {
                closeRunner()
                verifyOnce(b)
                val results = ArrayList<ModelResult>()
                // every Android-runnable model, text encoders included (their golden samples are the prompts' ids)
                for (model in b.manifest.models.filter { it.whyNotRunnable == null }) {
                    for (backend in Runners.backendsFor(model).take(1)) {  // the default backend of each model
                        say("benchmark ${model.name} (${model.runtime}/$backend): $warmup warm-up + $runs runs")
                        try {
                            val result = Benchmark(b, model).run({ Runners.open(b, model, backend, threads) }, warmup, runs) { say("  $it") }
                            results.add(result)
                            val g = result.golden
                            say(String.format(Locale.US, "  median %.2f ms, p90 %.2f ms, cold load %.0f ms; golden max_abs %.3g, PSNR %.1f dB%s",
                                result.latency.medianMs, result.latency.p90Ms, result.coldLoadMs, g?.maxAbs ?: Double.NaN,
                                g?.psnrDb ?: Double.NaN,
                                if (result.inputsMatchSeeds == false) " (seeded inputs do NOT match the golden inputs!)" else ""))
                        } catch (e: Throwable) {
                            say("  failed: ${e.javaClass.simpleName}: ${e.message}")
                        }
                    }
                }
                if (results.isEmpty()) throw IllegalStateException("no model ran: nothing written")
                val doc = DeviceResults.document(b, deviceInfo(), "cdx android_demo", APP_VERSION, results)
                val stamp = SimpleDateFormat("yyyyMMdd-HHmmss", Locale.US).format(Date())
                val file = File(resultsDir, "device_results-$stamp.json")
                DeviceResults.write(doc, file)
                say("wrote ${file.path}\n  adb pull ${file.path} .\n  cdx bench ingest ${file.name} --report REPORT.json")
            } catch (e: Throwable) {
                say("benchmark error: ${e.javaClass.simpleName}: ${e.message}")
            } finally {
                busy(false)
            }
        }
    }

    private fun deviceInfo(): DeviceInfo {
        val memory = ActivityManager.MemoryInfo()
        (getSystemService(Context.ACTIVITY_SERVICE) as? ActivityManager)?.getMemoryInfo(memory)
        // Build.SOC_MANUFACTURER / SOC_MODEL exist from API 31; read by reflection so older phones (minSdk 26) work.
        val soc = listOf("SOC_MANUFACTURER", "SOC_MODEL").mapNotNull { field ->
            try { Build::class.java.getField(field).get(null) as? String } catch (e: Exception) { null }
        }.filter { it.isNotBlank() && it != Build.UNKNOWN }.joinToString(" ").ifBlank { Build.HARDWARE }
        return DeviceInfo(
            model = "${Build.MANUFACTURER} ${Build.MODEL}".trim(),
            os = "Android",
            osVersion = "${Build.VERSION.RELEASE} (API ${Build.VERSION.SDK_INT})",
            soc = soc,
            abi = Build.SUPPORTED_ABIS.firstOrNull(),
            ramGb = if (memory.totalMem > 0) memory.totalMem / (1024.0 * 1024.0 * 1024.0) else null,
        )
    }

    companion object {
        const val APP_VERSION = "0.1.0"
    }
}
