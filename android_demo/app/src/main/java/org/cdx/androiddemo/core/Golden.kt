package org.cdx.androiddemo.core

/** The golden data of one model: per-sample inputs (in the model's input order) and the stacked expected outputs. */
class GoldenSet(val samples: Int, val seeds: List<Long>, val inputs: List<List<HostTensor>>, val outputs: Map<String, HostTensor>) {
    companion object {
        fun load(bundle: Bundle, model: ModelEntry): GoldenSet {
            val ref = model.golden ?: throw BundleError("${model.name}: the manifest has no golden data for this model")
            var samples = -1
            fun read(spec: TensorSpec, rel: String?): HostTensor {
                rel ?: throw BundleError("${model.name}: no golden file for '${spec.name}'")
                val (tensor, n) = HostTensor.read(spec, bundle.resolve(rel))
                if (samples >= 0 && n != samples) throw BundleError("$rel: $n samples, other golden files have $samples")
                samples = n
                return tensor
            }
            val stackedInputs = model.inputs.map { read(it, ref.inputs[it.name]) }
            val outputs = model.outputs.filter { ref.outputs.containsKey(it.name) }.associate { it.name to read(it, ref.outputs[it.name]) }
            if (outputs.isEmpty()) throw BundleError("${model.name}: the manifest lists no golden output")
            if (ref.seeds.isNotEmpty() && ref.seeds.size != samples) {
                throw BundleError("${model.name}: ${ref.seeds.size} golden seeds but $samples samples in the files")
            }
            val perSample = (0 until samples).map { i ->
                stackedInputs.mapIndexed { k, t -> t.slice(i, samples, model.inputs[k].shape) }
            }
            return GoldenSet(samples, ref.seeds, perSample, outputs)
        }
    }
}

/** Max-abs error and PSNR of what a runtime produced against the golden outputs (benchmarks/metrics.py semantics). */
class GoldenComparison(val samples: Int, val maxAbs: Double, val psnrDb: Double, val perSampleMaxAbs: List<Double>) {
    companion object {
        /** PSNR is capped at 999 dB (identical outputs), like `cdx bench device --local`. */
        const val PSNR_CAP_DB = 999.0

        fun compare(spec: TensorSpec, expected: HostTensor, actual: List<HostTensor>): GoldenComparison {
            val per = spec.count
            val total = actual.sumOf { it.count }
            if (total != expected.count) throw BundleError("${spec.name}: runtime gave $total values, golden has ${expected.count}")
            var maxAbs = 0.0
            var sumSq = 0.0
            val perSample = ArrayList<Double>()
            var offset = 0
            for (sample in actual) {
                var sampleMax = 0.0
                for (i in 0 until sample.count) {
                    val d = Math.abs(expected.get(offset + i) - sample.get(i))
                    if (d > sampleMax || d.isNaN()) sampleMax = d
                    sumSq += d * d
                }
                perSample.add(sampleMax)
                if (sampleMax > maxAbs || sampleMax.isNaN()) maxAbs = sampleMax
                offset += sample.count
            }
            check(per > 0)
            val mse = sumSq / expected.count
            val peak = psnrPeak(spec, expected)
            val psnr = if (mse == 0.0) PSNR_CAP_DB else Math.min(10.0 * Math.log10(peak * peak / mse), PSNR_CAP_DB)
            return GoldenComparison(actual.size, maxAbs, psnr, perSample)
        }

        /** The declared output range's width (images in [0, 1] → 1), else the reference's peak-to-peak. */
        fun psnrPeak(spec: TensorSpec, reference: HostTensor): Double {
            spec.range?.let { return it[1] - it[0] }
            var lo = Double.POSITIVE_INFINITY
            var hi = Double.NEGATIVE_INFINITY
            for (i in 0 until reference.count) { val v = reference.get(i); if (v < lo) lo = v; if (v > hi) hi = v }
            val ptp = hi - lo
            return if (ptp > 0) ptp else 1.0
        }
    }
}
