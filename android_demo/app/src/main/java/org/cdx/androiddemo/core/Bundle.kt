package org.cdx.androiddemo.core

import java.io.File
import java.io.FileInputStream
import java.io.IOException
import java.security.MessageDigest

/**
 * A folder written by `cdx convert`: manifest.json, the artifacts and golden/\*.bin.
 *
 * Every path the app opens goes through [resolve], which refuses anything outside the folder (also via symlinks).
 */
class Bundle private constructor(val root: File, val manifest: Manifest, val manifestSha256: String) {

    fun resolve(relPath: String): File {
        Manifest.checkRelPath(relPath, "bundle path")
        val base = root.canonicalFile
        val file = File(base, relPath).canonicalFile
        if (!file.path.startsWith(base.path + File.separator)) throw BundleError("'$relPath' resolves outside the bundle")
        return file
    }

    /** Check sizes and sha256 of every file in `files[]` (or only [only]); returns the number of files checked. */
    fun verify(only: Collection<String>? = null, progress: (String) -> Unit = {}): Int {
        var checked = 0
        for (entry in manifest.files) {
            if (only != null && entry.path !in only && only.none { entry.path.startsWith(it.trimEnd('/') + "/") }) continue
            val file = resolve(entry.path)
            if (!file.isFile) throw BundleError("${entry.path}: listed in the manifest but missing")
            if (file.length() != entry.sizeBytes) {
                throw BundleError("${entry.path}: size ${file.length()} bytes, manifest says ${entry.sizeBytes}")
            }
            progress(entry.path)
            val actual = sha256(file)
            if (actual != entry.sha256) {
                throw BundleError("${entry.path}: sha256 mismatch (file ${actual.take(12)}…, manifest ${entry.sha256.take(12)}…)")
            }
            checked++
        }
        return checked
    }

    /** The files one model needs (its artifact — a file or a folder — plus its golden data). */
    fun filesOf(model: ModelEntry): List<String> =
        listOf(model.file) + (model.golden?.inputs?.values ?: emptyList()) + (model.golden?.outputs?.values ?: emptyList())

    companion object {
        fun open(root: File): Bundle {
            val manifestFile = File(root, Manifest.FILE_NAME)
            if (!manifestFile.isFile) throw BundleError("${root.path}: no ${Manifest.FILE_NAME} (not a cdx bundle)")
            val bytes = try { manifestFile.readBytes() } catch (e: IOException) { throw BundleError("cannot read manifest: ${e.message}") }
            return Bundle(root, Manifest.parse(String(bytes, Charsets.UTF_8)), sha256(bytes))
        }

        fun sha256(bytes: ByteArray): String = hex(MessageDigest.getInstance("SHA-256").digest(bytes))

        fun sha256(file: File): String {
            val digest = MessageDigest.getInstance("SHA-256")
            FileInputStream(file).use { input ->
                val buffer = ByteArray(1 shl 16)
                while (true) {
                    val n = input.read(buffer)
                    if (n < 0) break
                    digest.update(buffer, 0, n)
                }
            }
            return hex(digest.digest())
        }

        private fun hex(bytes: ByteArray): String {
            val digits = "0123456789abcdef"
            val sb = StringBuilder(bytes.size * 2)
            for (b in bytes) { sb.append(digits[(b.toInt() shr 4) and 15]); sb.append(digits[b.toInt() and 15]) }
            return sb.toString()
        }
    }
}
