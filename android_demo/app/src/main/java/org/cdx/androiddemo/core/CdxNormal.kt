package org.cdx.androiddemo.core

/**
 * cdx-normal-v1, the seeded standard-normal generator of cdx/rng.py (see its module docstring for the spec).
 *
 * 32-bit integer hashing (Kotlin Int arithmetic wraps mod 2^32 exactly like the spec) plus float64 Box–Muller,
 * rounded to float32 at the end, so the phone draws the same latent as Python for the same seed.
 * `stream` is the input's index in the model's input list.
 */
object CdxNormal {
    const val NAME = "cdx-normal-v1"
    private const val TWO_POW_MINUS_32 = 1.0 / 4294967296.0
    private const val PI = 3.141592653589793

    /** lowbias32: x ^= x >> 16; x *= 0x7FEB352D; x ^= x >> 15; x *= 0x846CA68B; x ^= x >> 16 (mod 2^32). */
    fun mix32(v: Int): Int {
        var x = v
        x = x xor (x ushr 16)
        x *= 0x7FEB352D
        x = x xor (x ushr 15)
        x *= 0x846CA68B.toInt()
        x = x xor (x ushr 16)
        return x
    }

    /** key = mix32(mix32(seed) ^ (stream * 0x9E3779B9 + 0x632BE5AB)), seed taken mod 2^32. */
    fun streamKey(seed: Long, stream: Int): Int = mix32(mix32(seed.toInt()) xor (stream * 0x9E3779B9.toInt() + 0x632BE5AB))

    private fun unsigned(x: Int): Double = (x.toLong() and 0xFFFFFFFFL).toDouble()

    /** The two uint32 draws (as Int bit patterns) behind element [i]. */
    fun draws(key: Int, i: Int): Pair<Int, Int> = mix32(key xor mix32(2 * i)) to mix32(key xor mix32(2 * i + 1))

    fun normal(seed: Long, count: Int, stream: Int): FloatArray {
        require(count >= 0) { "$NAME: negative element count" }
        val key = streamKey(seed, stream)
        val out = FloatArray(count)
        for (i in 0 until count) {
            val a = mix32(key xor mix32(2 * i))
            val b = mix32(key xor mix32(2 * i + 1))
            val u1 = (unsigned(a) + 1.0) * TWO_POW_MINUS_32
            val u2 = unsigned(b) * TWO_POW_MINUS_32
            out[i] = (Math.sqrt(-2.0 * Math.log(u1)) * Math.cos((2.0 * PI) * u2)).toFloat()
        }
        return out
    }
}
