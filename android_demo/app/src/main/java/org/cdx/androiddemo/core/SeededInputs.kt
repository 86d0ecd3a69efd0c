package org.cdx.androiddemo.core

/**
 * Model inputs from a seed, built from the manifest alone (the rule of convert/golden.py `manifest_inputs`):
 * class_label → the chosen class, guidance_scale → the chosen w (default: conditioning.guidance.default),
 * an input named like a constant of the first schedule step → that constant, anything else → cdx-normal-v1 noise
 * with stream = the input's index in the model's input list. A text student's `text_embedding` comes from its text
 * encoder run on a prompt ([textEmbedding], see [PromptPath]); without one it is seeded noise like other inputs.
 */
object SeededInputs {
    const val TEXT_INPUT = "text_embedding"

    fun build(manifest: Manifest, model: ModelEntry, seed: Long, classLabel: Int, guidance: Double?,
              textEmbedding: HostTensor? = null): List<HostTensor> =
        model.inputs.mapIndexed { stream, spec ->
            when {
                spec.name == TEXT_INPUT && textEmbedding != null -> {
                    if (!textEmbedding.shape.contentEquals(spec.shape)) {
                        throw BundleError("${model.name}: text encoder gave ${textEmbedding.shape.contentToString()}, " +
                            "$TEXT_INPUT is ${spec.shape.contentToString()}")
                    }
                    HostTensor.ofFloats(spec, FloatArray(spec.count) { textEmbedding.get(it).toFloat() })
                }
                spec.name == "class_label" -> HostTensor.filled(spec, classLabel.toDouble())
                spec.name == "guidance_scale" -> HostTensor.filled(spec, guidance ?: defaultGuidance(manifest))
                manifest.firstStep.containsKey(spec.name) -> HostTensor.filled(spec, manifest.firstStep.getValue(spec.name))
                spec.dtype == DType.FLOAT32 || spec.dtype == DType.FLOAT16 ->
                    HostTensor.ofFloats(spec, CdxNormal.normal(seed, spec.count, stream))
                else -> throw BundleError("${model.name}: no rule to fill integer input '${spec.name}' from a seed")
            }
        }

    /** The guidance scale the manifest suggests (cdx's own fallback is 8.0 when a manifest names none). */
    fun defaultGuidance(manifest: Manifest): Double = manifest.conditioning.guidanceDefault ?: 8.0

    /** The class label golden sample [index] was made with: labels cycle through the classes. */
    fun goldenClassLabel(manifest: Manifest, index: Int): Int = index % (manifest.conditioning.numClasses ?: 1)
}
