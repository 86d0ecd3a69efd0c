package org.cdx.androiddemo.core

import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder

/** A tensor in app memory: what the runtime wrappers turn into ORT / ExecuTorch tensors and back. */
class HostTensor(val name: String, val dtype: DType, val shape: IntArray, val data: Any) {
    init {
        val n = shape.fold(1) { a, b -> a * b }
        val size = when (data) {
            is FloatArray -> data.size.also { check(dtype == DType.FLOAT32) }
            is ShortArray -> data.size.also { check(dtype == DType.FLOAT16) }  // IEEE half bit patterns
            is IntArray -> data.size.also { check(dtype == DType.INT32) }
            is LongArray -> data.size.also { check(dtype == DType.INT64) }
            else -> throw IllegalArgumentException("unsupported tensor storage ${data::class.java.name}")
        }
        require(size == n) { "$name: ${size} elements for shape ${shape.contentToString()}" }
    }

    val count: Int get() = shape.fold(1) { a, b -> a * b }

    /** Element [i] as float64 (float16 decoded), for comparisons and images. */
    fun get(i: Int): Double = when (data) {
        is FloatArray -> data[i].toDouble()
        is ShortArray -> halfToFloat(data[i]).toDouble()
        is IntArray -> data[i].toDouble()
        is LongArray -> data[i].toDouble()
        else -> throw IllegalStateException()
    }

    /** Sample [index] of [samples] stacked on axis 0 (each sample has [sampleShape]). */
    fun slice(index: Int, samples: Int, sampleShape: IntArray): HostTensor {
        val per = count / samples
        val from = index * per
        val sliced: Any = when (data) {
            is FloatArray -> data.copyOfRange(from, from + per)
            is ShortArray -> data.copyOfRange(from, from + per)
            is IntArray -> data.copyOfRange(from, from + per)
            is LongArray -> data.copyOfRange(from, from + per)
            else -> throw IllegalStateException()
        }
        return HostTensor(name, dtype, sampleShape, sliced)
    }

    fun toLittleEndianBytes(): ByteArray {
        val buf = ByteBuffer.allocate(count * dtype.bytes).order(ByteOrder.LITTLE_ENDIAN)
        when (data) {
            is FloatArray -> buf.asFloatBuffer().put(data)
            is ShortArray -> buf.asShortBuffer().put(data)
            is IntArray -> buf.asIntBuffer().put(data)
            is LongArray -> buf.asLongBuffer().put(data)
        }
        return buf.array()
    }

    companion object {
        /** Fill a tensor of [spec] with one value (class label, guidance scale, a step constant). */
        fun filled(spec: TensorSpec, value: Double): HostTensor = HostTensor(spec.name, spec.dtype, spec.shape, when (spec.dtype) {
            DType.FLOAT32 -> FloatArray(spec.count) { value.toFloat() }
            DType.FLOAT16 -> ShortArray(spec.count) { floatToHalf(value.toFloat()) }
            DType.INT32 -> IntArray(spec.count) { value.toInt() }
            DType.INT64 -> LongArray(spec.count) { value.toLong() }
        })

        fun ofFloats(spec: TensorSpec, values: FloatArray): HostTensor = when (spec.dtype) {
            DType.FLOAT32 -> HostTensor(spec.name, spec.dtype, spec.shape, values)
            DType.FLOAT16 -> HostTensor(spec.name, spec.dtype, spec.shape, ShortArray(values.size) { floatToHalf(values[it]) })
            else -> throw BundleError("${spec.name}: random values for an integer input")
        }

        /** Raw little-endian bytes → tensor; the element count must be a whole number of [spec]-shaped samples. */
        fun fromLittleEndian(spec: TensorSpec, bytes: ByteArray, where: String): Pair<HostTensor, Int> {
            if (bytes.size % (spec.count * spec.dtype.bytes) != 0) {
                throw BundleError("$where: ${bytes.size} bytes is not a whole number of ${spec.dtype.jsonName} " +
                    "${spec.shape.contentToString()} samples")
            }
            val samples = bytes.size / (spec.count * spec.dtype.bytes)
            val n = samples * spec.count
            val buf = ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN)
            val data: Any = when (spec.dtype) {
                DType.FLOAT32 -> FloatArray(n).also { buf.asFloatBuffer().get(it) }
                DType.FLOAT16 -> ShortArray(n).also { buf.asShortBuffer().get(it) }
                DType.INT32 -> IntArray(n).also { buf.asIntBuffer().get(it) }
                DType.INT64 -> LongArray(n).also { buf.asLongBuffer().get(it) }
            }
            val shape = spec.shape.copyOf().also { it[0] = it[0] * samples }
            return HostTensor(spec.name, spec.dtype, shape, data) to samples
        }

        fun read(spec: TensorSpec, file: File): Pair<HostTensor, Int> = fromLittleEndian(spec, file.readBytes(), file.name)

        fun halfToFloat(h: Short): Float {
            val bits = h.toInt() and 0xFFFF
            val sign = if (bits and 0x8000 != 0) -1f else 1f
            val exp = (bits ushr 10) and 0x1F
            val mant = bits and 0x3FF
            return sign * when (exp) {
                0 -> mant * Math.pow(2.0, -24.0).toFloat()
                31 -> if (mant == 0) Float.POSITIVE_INFINITY else Float.NaN
                else -> (1f + mant / 1024f) * Math.pow(2.0, (exp - 15).toDouble()).toFloat()
            }
        }

        /** Round-to-nearest-even float → IEEE half (bit pattern). */
        fun floatToHalf(f: Float): Short {
            val x = java.lang.Float.floatToIntBits(f)
            val sign = (x ushr 16) and 0x8000
            val absBits = x and 0x7FFFFFFF
            if (absBits >= 0x7F800000) return (sign or 0x7C00 or (if (absBits > 0x7F800000) 0x200 else 0)).toShort()
            if (absBits >= 0x477FF000) return (sign or 0x7C00).toShort()  // overflow → inf
            if (absBits < 0x38800000) {  // half subnormal or zero: a multiple of 2^-24, rounded half-to-even
                val units = Math.rint(Math.abs(f.toDouble()) * 16777216.0).toInt()
                return (sign or units).toShort()
            }
            val e = ((absBits ushr 23) - 112) shl 10
            val m = (absBits and 0x7FFFFF) ushr 13
            val rest = absBits and 0x1FFF
            var h = e or m
            if (rest > 0x1000 || (rest == 0x1000 && (h and 1) != 0)) h++
            return (sign or h).toShort()
        }
    }
}
