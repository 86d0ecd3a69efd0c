package org.cdx.androiddemo.core

/**
 * A small JSON reader/writer, so the core runs unchanged on the JVM (no org.json, which only Android ships).
 *
 * Objects become LinkedHashMap<String, Any?> (key order kept), arrays List<Any?>, numbers Long when integral and
 * written without a fraction or exponent, else Double.
 */
object Json {
    fun parse(text: String): Any? {
        val p = Parser(text)
        p.skipWs()
        val value = p.value()
        p.skipWs()
        if (p.pos != text.length) throw p.error("trailing characters")
        return value
    }

    fun write(value: Any?, indent: Int = 2): String = StringBuilder().also { writeTo(it, value, indent, 0) }.toString()

    private fun writeTo(out: StringBuilder, value: Any?, indent: Int, depth: Int) {
        when (value) {
            null -> out.append("null")
            is String -> quote(out, value)
            is Boolean -> out.append(value)
            is Int, is Long, is Short, is Byte -> out.append(value.toString())
            is Float -> writeDouble(out, value.toDouble())
            is Double -> writeDouble(out, value)
            is Map<*, *> -> container(out, value.entries.toList(), '{', '}', indent, depth) { e ->
                quote(out, e.key.toString()); out.append(if (indent > 0) ": " else ":")
                writeTo(out, e.value, indent, depth + 1)
            }
            is Iterable<*> -> container(out, value.toList(), '[', ']', indent, depth) { writeTo(out, it, indent, depth + 1) }
            is Array<*> -> writeTo(out, value.toList(), indent, depth)
            else -> throw IllegalArgumentException("cannot write ${value::class.java.name} as JSON")
        }
    }

    private fun <T> container(out: StringBuilder, items: List<T>, open: Char, close: Char, indent: Int, depth: Int,
                              item: (T) -> Unit) {
        out.append(open)
        if (items.isEmpty()) { out.append(close); return }
        items.forEachIndexed { i, element ->
            if (i > 0) out.append(',')
            if (indent > 0) out.append('\n').append(" ".repeat(indent * (depth + 1)))
            item(element)
        }
        if (indent > 0) out.append('\n').append(" ".repeat(indent * depth))
        out.append(close)
    }

    private fun writeDouble(out: StringBuilder, v: Double) {
        require(!v.isNaN() && !v.isInfinite()) { "JSON has no NaN/Infinity (got $v)" }
        out.append(v.toString())  // Kotlin/Java shortest round-trip repr, e.g. 1.0E-5, which JSON accepts
    }

    private fun quote(out: StringBuilder, s: String) {
        out.append('"')
        for (c in s) {
            when (c) {
                '"' -> out.append("\\\"")
                '\\' -> out.append("\\\\")
                '\n' -> out.append("\\n")
                '\r' -> out.append("\\r")
                '\t' -> out.append("\\t")
                else -> if (c < ' ') out.append(String.format("\\u%04x", c.code)) else out.append(c)
            }
        }
        out.append('"')
    }

    private class Parser(val s: String) {
        var pos = 0

        fun error(what: String) = IllegalArgumentException("invalid JSON at offset $pos: $what")

        fun skipWs() {
            while (pos < s.length && (s[pos] == ' ' || s[pos] == '\n' || s[pos] == '\r' || s[pos] == '\t')) pos++
        }

        fun value(): Any? {
            if (pos >= s.length) throw error("unexpected end")
            return when (val c = s[pos]) {
                '{' -> obj()
                '[' -> arr()
                '"' -> str()
                't' -> literal("true", true)
                'f' -> literal("false", false)
                'n' -> literal("null", null)
                else -> if (c == '-' || c in '0'..'9') num() else throw error("unexpected '$c'")
            }
        }

        private fun literal(word: String, v: Any?): Any? {
            if (!s.startsWith(word, pos)) throw error("expected $word")
            pos += word.length
            return v
        }

        private fun obj(): Map<String, Any?> {
            val m = LinkedHashMap<String, Any?>()
            pos++; skipWs()
            if (s.getOrNull(pos) == '}') { pos++; return m }
            while (true) {
                skipWs()
                if (s.getOrNull(pos) != '"') throw error("expected a key")
                val k = str(); skipWs()
                if (s.getOrNull(pos) != ':') throw error("expected ':'")
                pos++; skipWs()
                m[k] = value(); skipWs()
                when (s.getOrNull(pos)) {
                    ',' -> pos++
                    '}' -> { pos++; return m }
                    else -> throw error("expected ',' or '}'")
                }
            }
        }

        private fun arr(): List<Any?> {
            val l = ArrayList<Any?>()
            pos++; skipWs()
            if (s.getOrNull(pos) == ']') { pos++; return l }
            while (true) {
                skipWs(); l.add(value()); skipWs()
                when (s.getOrNull(pos)) {
                    ',' -> pos++
                    ']' -> { pos++; return l }
                    else -> throw error("expected ',' or ']'")
                }
            }
        }

        private fun str(): String {
            val sb = StringBuilder()
            pos++
            while (true) {
                if (pos >= s.length) throw error("unterminated string")
                val c = s[pos++]
                when (c) {
                    '"' -> return sb.toString()
                    '\\' -> {
                        if (pos >= s.length) throw error("bad escape")
                        when (val e = s[pos++]) {
                            '"', '\\', '/' -> sb.append(e)
                            'b' -> sb.append('\b')
                            'f' -> sb.append('\u000c')
                            'n' -> sb.append('\n')
                            'r' -> sb.append('\r')
                            't' -> sb.append('\t')
                            'u' -> {
                                if (pos + 4 > s.length) throw error("bad \\u escape")
                                sb.append(s.substring(pos, pos + 4).toInt(16).toChar()); pos += 4
                            }
                            else -> throw error("bad escape \\$e")
                        }
                    }
                    else -> sb.append(c)
                }
            }
        }

        private fun num(): Any {
            val start = pos
            if (s[pos] == '-') pos++
            while (pos < s.length && (s[pos].isDigit() || s[pos] in ".eE+-")) pos++
            val t = s.substring(start, pos)
            if (t.none { it in ".eE" }) t.toLongOrNull()?.let { return it }
            return t.toDoubleOrNull() ?: throw error("bad number '$t'")
        }
    }
}

/** Typed access to parsed JSON with messages that say where a field was missing. */
@Suppress("UNCHECKED_CAST")
class JsonObject(val map: Map<String, Any?>, val where: String) {
    fun has(key: String): Boolean = map.containsKey(key) && map[key] != null
    fun string(key: String): String = map[key] as? String ?: throw missing(key, "a string")
    fun stringOrNull(key: String): String? = map[key] as? String
    fun long(key: String): Long = (map[key] as? Number)?.toLong() ?: throw missing(key, "a number")
    fun double(key: String): Double = (map[key] as? Number)?.toDouble() ?: throw missing(key, "a number")
    fun doubleOrNull(key: String): Double? = (map[key] as? Number)?.toDouble()
    fun boolOrNull(key: String): Boolean? = map[key] as? Boolean
    fun obj(key: String): JsonObject = objOrNull(key) ?: throw missing(key, "an object")
    fun objOrNull(key: String): JsonObject? = (map[key] as? Map<String, Any?>)?.let { JsonObject(it, "$where.$key") }
    fun list(key: String): List<Any?> = map[key] as? List<Any?> ?: throw missing(key, "an array")
    fun listOrNull(key: String): List<Any?>? = map[key] as? List<Any?>
    fun objects(key: String): List<JsonObject> = list(key).mapIndexed { i, v ->
        JsonObject(v as? Map<String, Any?> ?: throw BundleError("$where.$key[$i] is not an object"), "$where.$key[$i]")
    }
    fun longs(key: String): List<Long> = list(key).map { (it as? Number)?.toLong() ?: throw missing(key, "an array of numbers") }
    fun doublesOrNull(key: String): List<Double>? = listOrNull(key)?.map {
        (it as? Number)?.toDouble() ?: throw missing(key, "an array of numbers")
    }
    fun strings(key: String): List<String> = list(key).map { it as? String ?: throw missing(key, "an array of strings") }

    private fun missing(key: String, what: String) = BundleError("$where.$key: expected $what")

    companion object {
        fun parse(text: String, where: String): JsonObject {
            val v = try { Json.parse(text) } catch (e: IllegalArgumentException) { throw BundleError("$where: ${e.message}") }
            @Suppress("UNCHECKED_CAST")
            return JsonObject(v as? Map<String, Any?> ?: throw BundleError("$where: not a JSON object"), where)
        }
    }
}
