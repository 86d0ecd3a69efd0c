package org.cdx.androiddemo.core

import java.text.Normalizer
import java.util.Locale

/**
 * CLIP's byte-level BPE (prompt → input_ids), built only from a manifest `tokenizer` section and the two files it
 * names (vocab.json, merges.txt): the rules of transformers' CLIPTokenizerFast, which cdx uses for a student and the
 * manifest describes (reference: cdx/clip_tokenizer.py; same steps as web_demo/tokenizer.mjs):
 *
 * 1. normalize, in the manifest's order: "nfc", "collapse_whitespace" (runs of Unicode White_Space → one space),
 *    "lowercase" (each code point on its own, Locale.ROOT: no final-sigma context, like Rust's char::to_lowercase);
 * 2. the special-token strings (vocab entries of bos/eos/pad/unk) are matched in the normalized text, leftmost-longest;
 * 3. words = CLIP's pattern  's|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+  scanned by hand (ordered
 *    alternatives, whitespace dropped), so every platform classifies the same way;
 * 4. each word's UTF-8 bytes → GPT-2's bytes_to_unicode characters, `end_of_word_suffix` on the last, then merge the
 *    lowest-ranked adjacent pair (every occurrence, left to right) until none is in merges.txt;
 * 5. ids (unk_token_id for a missing symbol), then [bos] + ids[: max_length - 2] + [eos], padded with pad_token_id.
 *
 * Pure Kotlin + java.text (no android.*): checked on the JVM against tests/data/tokenizer_vectors.json and a real
 * bundle's vectors.json by android_demo/check.sh --test.
 */
class ClipTokenizer(section: JsonObject, vocabText: String, mergesText: String) {
    val maxLength: Int
    val bosId: Int
    val eosId: Int
    val padId: Int
    val unkId: Int?
    private val steps: List<String>
    private val suffix: String
    private val vocab: Map<String, Int>
    private val ranks: Map<String, Int>
    private val specials: List<String>
    private val cache = HashMap<String, List<String>>()

    init {
        val where = section.where
        if (section.stringOrNull("type") != "clip_bpe") throw BundleError("$where.type: not clip_bpe")
        if (section.stringOrNull("byte_level") != "gpt2") throw BundleError("$where.byte_level: not gpt2")
        val pattern = section.stringOrNull("split_pattern")
        if (pattern != SPLIT_PATTERN) throw BundleError("$where.split_pattern: '$pattern' is not CLIP's (this app implements $SPLIT_PATTERN)")
        maxLength = section.long("max_length").toInt()
        if (maxLength < 2) throw BundleError("$where.max_length: $maxLength < 2")
        bosId = section.long("bos_token_id").toInt()
        eosId = section.long("eos_token_id").toInt()
        padId = section.long("pad_token_id").toInt()
        unkId = if (section.has("unk_token_id")) section.long("unk_token_id").toInt() else null
        steps = section.listOrNull("normalize")?.map { it as? String ?: throw BundleError("$where.normalize: not strings") } ?: emptyList()
        for (step in steps) if (step !in STEPS) throw BundleError("$where.normalize: unknown step '$step'")
        suffix = section.stringOrNull("end_of_word_suffix") ?: ""
        val parsed = try { Json.parse(vocabText) } catch (e: IllegalArgumentException) { throw BundleError("vocab.json: ${e.message}") }
        val obj = parsed as? Map<*, *> ?: throw BundleError("vocab.json: not a {token: id} object")
        vocab = obj.entries.associate { (k, v) ->
            val id = (v as? Number)?.toLong() ?: throw BundleError("vocab.json: id of '$k' is not a number")
            if (id < 0 || id > Int.MAX_VALUE) throw BundleError("vocab.json: id of '$k' is $id")
            k.toString() to id.toInt()
        }
        ranks = parseMerges(mergesText)
        val byId = HashMap<Int, String>().also { m -> vocab.forEach { (t, id) -> m[id] = t } }
        specials = listOfNotNull(bosId, eosId, padId, unkId).mapNotNull { byId[it] }.filter { it.isNotEmpty() }
            .distinct().sortedByDescending { it.length }
    }

    /** One word's symbols after every merge (lowest rank first). */
    fun bpe(word: String): List<String> {
        cache[word]?.let { return it }
        val chars = codePointStrings(word)
        var symbols = chars.dropLast(1) + (chars.last() + suffix)
        while (symbols.size > 1) {
            var best = Int.MAX_VALUE
            var first: String? = null
            var second: String? = null
            for (i in 0 until symbols.size - 1) {
                val rank = ranks["${symbols[i]} ${symbols[i + 1]}"] ?: continue
                if (rank < best) { best = rank; first = symbols[i]; second = symbols[i + 1] }
            }
            if (first == null) break
            val merged = ArrayList<String>(symbols.size)
            var j = 0
            while (j < symbols.size) {
                if (j + 1 < symbols.size && symbols[j] == first && symbols[j + 1] == second) {
                    merged.add(first + second); j += 2
                } else {
                    merged.add(symbols[j]); j += 1
                }
            }
            symbols = merged
        }
        if (cache.size < 10000) cache[word] = symbols
        return symbols
    }

    /** The BPE symbols of [text] (special tokens as themselves), before ids and the template. */
    fun tokenize(text: String): List<String> {
        val out = ArrayList<String>()
        val normalized = normalize(text, steps)
        var start = 0
        var i = 0
        fun flush(end: Int) {
            if (end <= start) return
            for (word in splitWords(normalized.substring(start, end))) {
                val bytes = word.toByteArray(Charsets.UTF_8)
                out.addAll(bpe(bytes.joinToString("") { BYTE_CHARS[it.toInt() and 0xFF] }))
            }
        }
        while (i < normalized.length) {
            val hit = specials.firstOrNull { normalized.startsWith(it, i) }
            if (hit != null) {
                flush(i); out.add(hit); i += hit.length; start = i
            } else {
                i++
            }
        }
        flush(normalized.length)
        return out
    }

    /** input_ids of [text]: always [maxLength] long. */
    fun encode(text: String): IntArray {
        val ids = ArrayList<Int>()
        for (symbol in tokenize(text)) {
            val id = vocab[symbol] ?: unkId
            if (id != null) ids.add(id)
        }
        val out = IntArray(maxLength) { padId }
        out[0] = bosId
        val kept = Math.min(ids.size, maxLength - 2)
        for (k in 0 until kept) out[k + 1] = ids[k]
        out[kept + 1] = eosId
        return out
    }

    companion object {
        const val SPLIT_PATTERN = "'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+"
        private val STEPS = setOf("nfc", "collapse_whitespace", "lowercase")
        private val CONTRACTIONS = listOf("s", "t", "re", "ve", "m", "ll", "d")
        /** Unicode White_Space (what \s matches in the reference tokenizers' regex engines). */
        private val WHITE_SPACE = setOf(0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x20, 0x85, 0xa0, 0x1680, 0x2000, 0x2001, 0x2002,
            0x2003, 0x2004, 0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200a, 0x2028, 0x2029, 0x202f, 0x205f, 0x3000)
        private const val MAX_MERGES = 1 shl 20

        /** GPT-2's reversible byte → character table: printable Latin-1 bytes map to themselves, the rest to U+0100…. */
        val BYTE_CHARS: Array<String> = run {
            var extra = 0
            Array(256) { b ->
                val keep = b in 0x21..0x7e || b in 0xa1..0xac || b in 0xae..0xff
                String(Character.toChars(if (keep) b else 256 + extra++))
            }
        }

        /** merges.txt → ("a b" → rank): rank = line order after an optional '#version' header. */
        fun parseMerges(text: String): Map<String, Int> {
            val lines = text.split(Regex("\r\n|\n|\r")).toMutableList()
            if (lines.isNotEmpty() && lines[0].startsWith("#version")) lines.removeAt(0)
            if (lines.size > MAX_MERGES) throw BundleError("merges.txt: ${lines.size} lines (more than $MAX_MERGES)")
            val ranks = HashMap<String, Int>()
            lines.forEachIndexed { rank, line ->
                val parts = line.trim().split(' ', '\t').filter { it.isNotEmpty() }
                if (parts.size == 2) ranks["${parts[0]} ${parts[1]}"] = rank
            }
            return ranks
        }

        fun normalize(text: String, steps: List<String>): String {
            var out = text
            for (step in steps) {
                out = when (step) {
                    "nfc" -> Normalizer.normalize(out, Normalizer.Form.NFC)
                    "collapse_whitespace" -> collapseWhitespace(out)
                    "lowercase" -> codePointStrings(out).joinToString("") { it.lowercase(Locale.ROOT) }
                    else -> throw BundleError("tokenizer: unknown normalize step '$step'")
                }
            }
            return out
        }

        private fun collapseWhitespace(text: String): String {
            val sb = StringBuilder()
            var inRun = false
            for (ch in codePointStrings(text)) {
                if (isSpace(ch)) { if (!inRun) sb.append(' '); inRun = true } else { sb.append(ch); inRun = false }
            }
            return sb.toString()
        }

        private fun codePointStrings(text: String): List<String> {
            val out = ArrayList<String>(text.length)
            var i = 0
            while (i < text.length) {
                val cp = text.codePointAt(i)
                val n = Character.charCount(cp)
                out.add(text.substring(i, i + n)); i += n
            }
            return out
        }

        private fun isSpace(ch: String) = ch.codePointAt(0) in WHITE_SPACE
        private fun isLetter(ch: String) = Character.isLetter(ch.codePointAt(0))  // Lu Ll Lt Lm Lo = \p{L}
        private fun isNumber(ch: String) = when (Character.getType(ch.codePointAt(0)).toByte()) {
            Character.DECIMAL_DIGIT_NUMBER, Character.LETTER_NUMBER, Character.OTHER_NUMBER -> true
            else -> false
        }

        /** The words of [text] by CLIP's split pattern. */
        fun splitWords(text: String): List<String> {
            val chars = codePointStrings(text)
            val words = ArrayList<String>()
            var i = 0
            while (i < chars.size) {
                val ch = chars[i]
                if (ch == "'") {
                    val tail = CONTRACTIONS.firstOrNull { c -> c.indices.all { k -> chars.getOrNull(i + 1 + k) == c[k].toString() } }
                    if (tail != null) { words.add("'$tail"); i += 1 + tail.length; continue }
                }
                var j = i
                when {
                    isLetter(ch) -> while (j < chars.size && isLetter(chars[j])) j++
                    isNumber(ch) -> j = i + 1
                    !isSpace(ch) -> while (j < chars.size && !isSpace(chars[j]) && !isLetter(chars[j]) && !isNumber(chars[j])) j++
                    else -> { i++; continue }
                }
                words.add(chars.subList(i, j).joinToString(""))
                i = j
            }
            return words
        }
    }
}
