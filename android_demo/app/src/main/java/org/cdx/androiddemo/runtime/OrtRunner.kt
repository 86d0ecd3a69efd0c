package org.cdx.androiddemo.runtime

import ai.onnxruntime.OnnxJavaType
import ai.onnxruntime.OnnxTensor
import ai.onnxruntime.OrtEnvironment
import ai.onnxruntime.OrtSession
import ai.onnxruntime.TensorInfo
import org.cdx.androiddemo.core.BundleError
import org.cdx.androiddemo.core.DType
import org.cdx.androiddemo.core.HostTensor
import org.cdx.androiddemo.core.ModelEntry
import org.cdx.androiddemo.core.ModelRunner
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.FloatBuffer
import java.nio.IntBuffer
import java.nio.LongBuffer

/**
 * ONNX Runtime Mobile (com.microsoft.onnxruntime:onnxruntime-android) running a `.ort` (or `.onnx`) artifact.
 * backend "cpu" (default EP) or "nnapi" (NNAPI EP, CPU fallback for the ops it does not take).
 */
class OrtRunner(file: File, private val model: ModelEntry, override val backend: String, override val threads: Int?) : ModelRunner {
    override val runtime = "onnxruntime"
    private val env: OrtEnvironment = OrtEnvironment.getEnvironment()
    private val options = OrtSession.SessionOptions()
    private val session: OrtSession

    init {
        threads?.let { options.setIntraOpNumThreads(it) }
        if (model.format == "ort") options.addConfigEntry("session.load_model_format", "ORT")
        when (backend) {
            "cpu" -> {}
            "nnapi" -> options.addNnapi()
            else -> throw BundleError("ONNX Runtime backend '$backend' is not offered here (cpu, nnapi)")
        }
        session = try {
            env.createSession(file.absolutePath, options)
        } catch (e: Exception) {
            options.close()
            throw e
        }
    }

    override fun run(inputs: List<HostTensor>): Map<String, HostTensor> {
        val tensors = LinkedHashMap<String, OnnxTensor>()
        try {
            for (t in inputs) tensors[t.name] = toOrt(t)
            session.run(tensors).use { result ->
                val byName = HashMap<String, HostTensor>()
                for (entry in result) {
                    val spec = model.outputs.firstOrNull { it.name == entry.key } ?: continue
                    val value = entry.value as? OnnxTensor ?: throw BundleError("output '${entry.key}' is not a tensor")
                    val shape = (value.info as TensorInfo).shape.map { it.toInt() }.toIntArray()
                    val n = shape.fold(1) { a, b -> a * b }
                    val data: Any = when (spec.dtype) {
                        DType.FLOAT32 -> FloatArray(n).also { value.floatBuffer.get(it) }
                        DType.FLOAT16 -> ShortArray(n).also { value.shortBuffer.get(it) }
                        DType.INT32 -> IntArray(n).also { value.intBuffer.get(it) }
                        DType.INT64 -> LongArray(n).also { value.longBuffer.get(it) }
                    }
                    byName[spec.name] = HostTensor(spec.name, spec.dtype, shape, data)
                }
                return byName
            }
        } finally {
            tensors.values.forEach { it.close() }
        }
    }

    private fun toOrt(t: HostTensor): OnnxTensor {
        val shape = t.shape.map { it.toLong() }.toLongArray()
        return when (val d = t.data) {
            is FloatArray -> OnnxTensor.createTensor(env, FloatBuffer.wrap(d), shape)
            is LongArray -> OnnxTensor.createTensor(env, LongBuffer.wrap(d), shape)
            is IntArray -> OnnxTensor.createTensor(env, IntBuffer.wrap(d), shape)
            is ShortArray -> {
                val bytes = ByteBuffer.allocateDirect(d.size * 2).order(ByteOrder.nativeOrder())
                bytes.asShortBuffer().put(d)
                OnnxTensor.createTensor(env, bytes, shape, OnnxJavaType.FLOAT16)
            }
            else -> throw BundleError("${t.name}: unsupported tensor storage")
        }
    }

    override fun close() {
        session.close()
        options.close()
    }
}
