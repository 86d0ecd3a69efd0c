package org.cdx.androiddemo.runtime

import org.cdx.androiddemo.core.Bundle
import org.cdx.androiddemo.core.BundleError
import org.cdx.androiddemo.core.ModelEntry
import org.cdx.androiddemo.core.ModelRunner

/** Opens the runtime a manifest model needs; the backends the UI offers for it. */
object Runners {
    fun backendsFor(model: ModelEntry): List<String> = when (model.runtime) {
        "executorch" -> listOf(model.delegate ?: "portable")
        "onnxruntime" -> listOf("cpu", "nnapi")
        else -> emptyList()
    }

    fun open(bundle: Bundle, model: ModelEntry, backend: String, threads: Int?): ModelRunner {
        model.whyNotRunnable?.let { throw BundleError("${model.name}: $it") }
        val file = bundle.resolve(model.file)
        return when (model.runtime) {
            "executorch" -> ExecuTorchRunner(file, model)
            "onnxruntime" -> OrtRunner(file, model, backend, threads)
            else -> throw BundleError("${model.name}: no runtime")
        }
    }
}
