package org.cdx.androiddemo.core

/** Latency statistics with numpy's default (linear) percentile, so phone and desktop numbers mean the same. */
class LatencyStats(val medianMs: Double, val p90Ms: Double, val p99Ms: Double, val minMs: Double, val maxMs: Double, val runs: Int) {
    fun toJson(): Map<String, Any> = linkedMapOf(
        "median_ms" to medianMs, "p90_ms" to p90Ms, "p99_ms" to p99Ms, "min_ms" to minMs, "max_ms" to maxMs, "runs" to runs,
    )

    companion object {
        fun of(samplesMs: List<Double>): LatencyStats {
            require(samplesMs.isNotEmpty()) { "no timing samples" }
            val sorted = samplesMs.sorted()
            return LatencyStats(percentile(sorted, 50.0), percentile(sorted, 90.0), percentile(sorted, 99.0),
                sorted.first(), sorted.last(), sorted.size)
        }

        /** numpy.percentile(method="linear") of an ascending list. */
        fun percentile(sorted: List<Double>, q: Double): Double {
            val pos = (sorted.size - 1) * q / 100.0
            val lo = Math.floor(pos).toInt()
            val hi = Math.min(lo + 1, sorted.size - 1)
            val frac = pos - lo
            return sorted[lo] + (sorted[hi] - sorted[lo]) * frac
        }
    }
}
