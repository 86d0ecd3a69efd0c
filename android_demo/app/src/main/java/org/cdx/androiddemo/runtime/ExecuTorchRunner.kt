package org.cdx.androiddemo.runtime

import org.cdx.androiddemo.core.BundleError
import org.cdx.androiddemo.core.DType
import org.cdx.androiddemo.core.HostTensor
import org.cdx.androiddemo.core.ModelEntry
import org.cdx.androiddemo.core.ModelRunner
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.pytorch.executorch.Tensor
import java.io.File

/**
 * ExecuTorch (org.pytorch:executorch-android) running a `.pte`; the delegate (XNNPACK for cdx's Android exports) is
 * baked into the file at export, so the backend is read from the manifest's `export.delegate`.
 */
class ExecuTorchRunner(file: File, private val model: ModelEntry) : ModelRunner {
    override val runtime = "executorch"
    override val backend: String = model.delegate ?: "portable"
    override val threads: Int? = null
    private val module: Module = Module.load(file.absolutePath)

    override fun run(inputs: List<HostTensor>): Map<String, HostTensor> {
        val values = inputs.map { EValue.from(toTensor(it)) }.toTypedArray()
        val outputs = module.forward(*values)
        if (outputs.size < model.outputs.size) throw BundleError("the .pte returned ${outputs.size} outputs, manifest lists ${model.outputs.size}")
        return model.outputs.withIndex().associate { (i, spec) ->
            val tensor = outputs[i].toTensor()
            val shape = tensor.shape().map { it.toInt() }.toIntArray()
            val data: Any = when (spec.dtype) {
                DType.FLOAT32 -> tensor.dataAsFloatArray
                DType.FLOAT16 -> tensor.dataAsShortArray
                DType.INT32 -> tensor.dataAsIntArray
                DType.INT64 -> tensor.dataAsLongArray
            }
            spec.name to HostTensor(spec.name, spec.dtype, shape, data)
        }
    }

    private fun toTensor(t: HostTensor): Tensor {
        val shape = t.shape.map { it.toLong() }.toLongArray()
        return when (val d = t.data) {
            is FloatArray -> Tensor.fromBlob(d, shape)
            is LongArray -> Tensor.fromBlob(d, shape)
            is IntArray -> Tensor.fromBlob(d, shape)
            is ShortArray -> Tensor.fromBlob(d, shape)  // float16 bit patterns
            else -> throw BundleError("${t.name}: unsupported tensor storage")
        }
    }

    override fun close() = module.destroy()
}
