package org.cdx.androiddemo.core

import java.io.File
import java.text.SimpleDateFormat
import java.util.Date
import java.util.Locale
import java.util.TimeZone

/** The device fields of cdx-device-results/1 (android.os.Build on a phone; filled by the caller). */
class DeviceInfo(val model: String, val os: String, val osVersion: String?, val soc: String?, val abi: String?, val ramGb: Double?) {
    fun toJson(): Map<String, Any> {
        val m = linkedMapOf<String, Any>("model" to model.ifBlank { "unknown" }, "os" to os.ifBlank { "unknown" })
        osVersion?.takeIf { it.isNotBlank() }?.let { m["os_version"] = it }
        soc?.takeIf { it.isNotBlank() }?.let { m["soc"] = it }
        abi?.takeIf { it.isNotBlank() }?.let { m["abi"] = it }
        ramGb?.takeIf { it >= 0 }?.let { m["ram_gb"] = Math.round(it * 100) / 100.0 }
        return m
    }
}

/** Writes the `cdx-device-results/1` document (benchmarks/device_results.schema.json) that `cdx bench ingest` reads. */
object DeviceResults {
    const val SCHEMA = "cdx-device-results/1"

    fun document(bundle: Bundle, device: DeviceInfo, appName: String, appVersion: String, results: List<ModelResult>,
                 now: Date = Date()): Map<String, Any> {
        require(results.isNotEmpty()) { "no results to write" }
        val iso = SimpleDateFormat("yyyy-MM-dd'T'HH:mm:ss'+00:00'", Locale.US).apply { timeZone = TimeZone.getTimeZone("UTC") }
        val bundleJson = linkedMapOf<String, Any>(
            "source_weights_sha256" to bundle.manifest.sourceWeightsSha256,
            "manifest_sha256" to bundle.manifestSha256,
        )
        bundle.manifest.models.firstOrNull()?.let { bundleJson["target"] = it.target }
        return linkedMapOf(
            "schema" to SCHEMA,
            "created_at" to iso.format(now),
            "device" to device.toJson(),
            "app" to linkedMapOf("name" to appName, "version" to appVersion),
            "bundle" to bundleJson,
            "results" to results.map { it.toJson() },
        )
    }

    /** Write atomically (temp file + rename), so a pulled file is never half-written. */
    fun write(document: Map<String, Any>, file: File) {
        file.parentFile?.mkdirs()
        val tmp = File(file.path + ".tmp")
        tmp.writeText(Json.write(document) + "\n", Charsets.UTF_8)
        if (!tmp.renameTo(file)) { file.delete(); if (!tmp.renameTo(file)) throw java.io.IOException("cannot write ${file.path}") }
    }
}
