package org.cdx.androiddemo.core

/**
 * A model output → ARGB pixels for display (pure Kotlin, so the JVM check covers it; the activity wraps the pixels in
 * an android.graphics.Bitmap). Only NCHW images with 1 (grey) or 3 (RGB) channels and batch 1 are drawn; values are
 * mapped from the output's declared `range` (e.g. [0, 1]), else from their own min..max.
 */
class ArgbImage(val width: Int, val height: Int, val pixels: IntArray)

object Images {
    /** Why [spec] cannot be drawn, or null when it can. */
    fun whyNotDrawable(spec: TensorSpec): String? {
        val s = spec.shape
        return when {
            s.size != 4 -> "output '${spec.name}' has shape ${s.contentToString()}, not [1, C, H, W]"
            s[0] != 1 -> "output '${spec.name}' has batch ${s[0]}, not 1"
            s[1] != 1 && s[1] != 3 -> "output '${spec.name}' has ${s[1]} channels (latents?), not 1 or 3"
            else -> null
        }
    }

    fun toArgb(spec: TensorSpec, tensor: HostTensor): ArgbImage {
        whyNotDrawable(spec)?.let { throw BundleError(it) }
        val channels = spec.shape[1]; val h = spec.shape[2]; val w = spec.shape[3]
        if (tensor.count != channels * h * w) throw BundleError("${spec.name}: ${tensor.count} values for ${spec.shape.contentToString()}")
        var lo: Double; var hi: Double
        val range = spec.range
        if (range != null && range.size == 2 && range[1] > range[0]) { lo = range[0]; hi = range[1] } else {
            lo = Double.POSITIVE_INFINITY; hi = Double.NEGATIVE_INFINITY
            for (i in 0 until tensor.count) { val v = tensor.get(i); if (v < lo) lo = v; if (v > hi) hi = v }
            if (!(hi > lo)) { lo = 0.0; hi = 1.0 }
        }
        val plane = h * w
        fun byte(i: Int): Int {
            val v = (tensor.get(i) - lo) / (hi - lo)
            return if (v.isNaN()) 0 else Math.round(Math.max(0.0, Math.min(1.0, v)) * 255.0).toInt()
        }
        val pixels = IntArray(plane) { p ->
            val r = byte(p)
            val g = if (channels == 3) byte(plane + p) else r
            val b = if (channels == 3) byte(2 * plane + p) else r
            (0xFF shl 24) or (r shl 16) or (g shl 8) or b
        }
        return ArgbImage(w, h, pixels)
    }
}
