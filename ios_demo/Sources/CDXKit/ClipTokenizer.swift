import Foundation

// CLIP's byte-level BPE (prompt → input_ids), built only from a manifest `tokenizer` section and the files it names:
// the rules of transformers' CLIPTokenizerFast, which cdx uses for a student and the manifest describes (reference:
// cdx/clip_tokenizer.py; the same steps as web_demo/tokenizer.mjs and the Android app's ClipTokenizer.kt):
//   1. normalize in the manifest's order: "nfc", "collapse_whitespace" (runs of Unicode White_Space → one space),
//      "lowercase" (each scalar's own lowercase mapping: no final-sigma context);
//   2. the special-token strings (vocab entries of bos/eos/pad/unk) are matched in the normalized text, longest first;
//   3. words = CLIP's pattern  's|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+  scanned by hand;
//   4. each word's UTF-8 bytes → GPT-2's bytes_to_unicode characters, `end_of_word_suffix` on the last, then the
//      lowest-ranked adjacent pair in merges.txt is merged (every occurrence, left to right) until none is ranked;
//   5. ids (unk_token_id for a missing symbol), [bos] + ids[: max_length - 2] + [eos], padded with pad_token_id.
//
// Everything works on Unicode scalar values ([UInt32]), never on Characters: a Swift Character is a grapheme cluster
// ("👍🏽" is one), which CLIP does not know about. BPE symbols are Strings of GPT-2 byte characters (U+0021…U+0143, no
// combining marks), for which String equality (canonical equivalence) is plain scalar equality.
//
// tests/test_ios_demo.py evaluates these functions from their tree-sitter parse tree (no Swift compiler on Linux)
// against tests/data/tokenizer_vectors.json, and `swift test` runs ClipTokenizerTests on a Mac.
// The code therefore keeps to a small subset: no closures, no switch, mixed operators parenthesised.

public enum ClipTokenizerError: Error, CustomStringConvertible {
    case unsupported(String)

    public var description: String {
        switch self {
        case .unsupported(let message): return message
        }
    }
}

let clipSplitPattern = "'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+"
// 's 't 're 've 'm 'll 'd without the apostrophe, as scalars, in the pattern's order
let clipContractions: [[UInt32]] = [[0x73], [0x74], [0x72, 0x65], [0x76, 0x65], [0x6D], [0x6C, 0x6C], [0x64]]
// Unicode White_Space: what \s matches in the reference tokenizers' regex engines
let clipWhiteSpace: [UInt32] = [0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680, 0x2000, 0x2001, 0x2002, 0x2003,
                                0x2004, 0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200A, 0x2028, 0x2029, 0x202F, 0x205F,
                                0x3000]

func clipScalars(_ text: String) -> [UInt32] {
    var out: [UInt32] = []
    for scalar in text.unicodeScalars {
        out.append(scalar.value)
    }
    return out
}

func clipString(_ scalars: [UInt32]) -> String {
    var view = String.UnicodeScalarView()
    for value in scalars {
        if let scalar = Unicode.Scalar(value) {
            view.append(scalar)
        }
    }
    return String(view)
}

func clipIsSpace(_ value: UInt32) -> Bool {
    return clipWhiteSpace.contains(value)
}

func clipIsLetter(_ value: UInt32) -> Bool {
    if let scalar = Unicode.Scalar(value) {
        let category = scalar.properties.generalCategory
        return (category == .uppercaseLetter) || (category == .lowercaseLetter) || (category == .titlecaseLetter)
            || (category == .modifierLetter) || (category == .otherLetter)
    }
    return false
}

func clipIsNumber(_ value: UInt32) -> Bool {
    if let scalar = Unicode.Scalar(value) {
        let category = scalar.properties.generalCategory
        return (category == .decimalNumber) || (category == .letterNumber) || (category == .otherNumber)
    }
    return false
}

func clipHasPrefix(_ scalars: [UInt32], _ prefix: [UInt32], at start: Int) -> Bool {
    if (start + prefix.count) > scalars.count {
        return false
    }
    var k = 0
    while k < prefix.count {
        if scalars[start + k] != prefix[k] {
            return false
        }
        k += 1
    }
    return true
}

/// GPT-2's reversible byte → character table: printable Latin-1 bytes map to themselves, the rest to U+0100….
func clipByteCharacters() -> [String] {
    var table: [String] = []
    var extra: UInt32 = 0
    var byte: UInt32 = 0
    while byte < 256 {
        let keep = ((byte >= 0x21) && (byte <= 0x7E)) || ((byte >= 0xA1) && (byte <= 0xAC)) || ((byte >= 0xAE) && (byte <= 0xFF))
        if keep {
            table.append(clipString([byte]))
        } else {
            table.append(clipString([256 + extra]))
            extra += 1
        }
        byte += 1
    }
    return table
}

/// merges.txt → ["a b": rank]: rank = line order after an optional "#version" header (\n, \r\n or \r line ends).
func clipParseMerges(_ text: String) -> [String: Int] {
    var lines: [[UInt32]] = []
    var line: [UInt32] = []
    var previousCR = false
    for value in clipScalars(text) {
        if value == 0x0A {
            if !previousCR {
                lines.append(line)
            }
            line = []
            previousCR = false
        } else if value == 0x0D {
            lines.append(line)
            line = []
            previousCR = true
        } else {
            line.append(value)
            previousCR = false
        }
    }
    lines.append(line)
    var first = 0
    if (lines.count > 0) && clipHasPrefix(lines[0], clipScalars("#version"), at: 0) {
        first = 1
    }
    var ranks: [String: Int] = [:]
    var index = first
    while index < lines.count {
        var parts: [[UInt32]] = []
        var part: [UInt32] = []
        for value in lines[index] {
            if (value == 0x20) || (value == 0x09) {
                if part.count > 0 {
                    parts.append(part)
                }
                part = []
            } else {
                part.append(value)
            }
        }
        if part.count > 0 {
            parts.append(part)
        }
        if parts.count == 2 {
            let left = clipString(parts[0])
            let right = clipString(parts[1])
            ranks[left + " " + right] = index - first
        }
        index += 1
    }
    return ranks
}

/// The manifest's normalize steps, in order, on scalars.
func clipNormalize(_ text: String, steps: [String]) throws -> [UInt32] {
    var scalars = clipScalars(text)
    for step in steps {
        if step == "nfc" {
            scalars = clipScalars(clipString(scalars).precomposedStringWithCanonicalMapping)
        } else if step == "collapse_whitespace" {
            var out: [UInt32] = []
            var inRun = false
            for value in scalars {
                if clipIsSpace(value) {
                    if !inRun {
                        out.append(0x20)
                    }
                    inRun = true
                } else {
                    out.append(value)
                    inRun = false
                }
            }
            scalars = out
        } else if step == "lowercase" {
            var out: [UInt32] = []
            for value in scalars {
                if let scalar = Unicode.Scalar(value) {
                    for lower in scalar.properties.lowercaseMapping.unicodeScalars {
                        out.append(lower.value)
                    }
                }
            }
            scalars = out
        } else {
            throw ClipTokenizerError.unsupported("tokenizer: unknown normalize step \(step)")
        }
    }
    return scalars
}

/// The words of `scalars` by CLIP's split pattern (ordered alternatives at each position; whitespace dropped).
func clipSplitWords(_ scalars: [UInt32]) -> [[UInt32]] {
    var words: [[UInt32]] = []
    var i = 0
    while i < scalars.count {
        let value = scalars[i]
        if value == 0x27 {
            var matched = 0
            for tail in clipContractions {
                if (matched == 0) && clipHasPrefix(scalars, tail, at: i + 1) {
                    matched = tail.count
                }
            }
            if matched > 0 {
                words.append(Array(scalars[i..<(i + 1 + matched)]))
                i = i + 1 + matched
                continue
            }
        }
        var j = i
        if clipIsLetter(value) {
            while (j < scalars.count) && clipIsLetter(scalars[j]) {
                j += 1
            }
        } else if clipIsNumber(value) {
            j = i + 1
        } else if !clipIsSpace(value) {
            while (j < scalars.count) && !clipIsSpace(scalars[j]) && !clipIsLetter(scalars[j]) && !clipIsNumber(scalars[j]) {
                j += 1
            }
        } else {
            i += 1
            continue
        }
        words.append(Array(scalars[i..<j]))
        i = j
    }
    return words
}

/// prompt → input_ids for one manifest `tokenizer` section.
public struct ClipTokenizer {
    public let maxLength: Int
    public let bosId: Int
    public let eosId: Int
    public let padId: Int
    public let unkId: Int?
    let steps: [String]
    let suffix: String
    let vocab: [String: Int]
    let ranks: [String: Int]
    let specials: [[UInt32]]
    let byteCharacters: [String]

    public init(section: Manifest.TokenizerSection, vocab: [String: Int], merges: String) throws {
        if section.type != "clip_bpe" {
            throw ClipTokenizerError.unsupported("tokenizer type \(section.type) is not clip_bpe")
        }
        if section.byteLevel != "gpt2" {
            throw ClipTokenizerError.unsupported("tokenizer byte_level \(section.byteLevel) is not gpt2")
        }
        if section.splitPattern != clipSplitPattern {
            throw ClipTokenizerError.unsupported("tokenizer split_pattern is not CLIP's (this app implements only that one)")
        }
        if section.maxLength < 2 {
            throw ClipTokenizerError.unsupported("tokenizer max_length \(section.maxLength) < 2")
        }
        for step in section.normalize {
            if (step != "nfc") && (step != "collapse_whitespace") && (step != "lowercase") {
                throw ClipTokenizerError.unsupported("tokenizer: unknown normalize step \(step)")
            }
        }
        maxLength = section.maxLength
        bosId = section.bosTokenId
        eosId = section.eosTokenId
        padId = section.padTokenId
        unkId = section.unkTokenId
        steps = section.normalize
        suffix = section.endOfWordSuffix
        self.vocab = vocab
        ranks = clipParseMerges(merges)
        byteCharacters = clipByteCharacters()
        // the special tokens' strings, longest first (a sorted insert: the vocabulary's order is not defined)
        var found: [[UInt32]] = []
        var wanted: [Int] = [section.bosTokenId, section.eosTokenId, section.padTokenId]
        if let unk = section.unkTokenId {
            wanted.append(unk)
        }
        for (token, id) in vocab {
            if wanted.contains(id) {
                let scalars = clipScalars(token)
                if (scalars.count > 0) && !found.contains(scalars) {
                    var at = 0
                    while (at < found.count) && (found[at].count >= scalars.count) {
                        at += 1
                    }
                    found.insert(scalars, at: at)
                }
            }
        }
        specials = found
    }

    /// Reads vocab.json and merges.txt through `bundle` (sha256-checked against the manifest first).
    public static func load(section: Manifest.TokenizerSection, bundle: BundleFolder) throws -> ClipTokenizer {
        let vocabData = try bundle.read(section.files.vocab)
        let mergesData = try bundle.read(section.files.merges)
        guard let vocab = try JSONSerialization.jsonObject(with: vocabData) as? [String: Int] else {
            throw ClipTokenizerError.unsupported("\(section.files.vocab) is not a {token: id} object")
        }
        guard let merges = String(data: mergesData, encoding: .utf8) else {
            throw ClipTokenizerError.unsupported("\(section.files.merges) is not UTF-8")
        }
        return try ClipTokenizer(section: section, vocab: vocab, merges: merges)
    }

    /// One word's symbols after every merge (lowest rank first).
    func bpe(_ word: [UInt32]) -> [String] {
        let bytes = Array(clipString(word).utf8)
        var symbols: [String] = []
        var k = 0
        while k < bytes.count {
            var symbol = byteCharacters[Int(bytes[k])]
            if k == (bytes.count - 1) {
                symbol = symbol + suffix
            }
            symbols.append(symbol)
            k += 1
        }
        while symbols.count > 1 {
            var best = Int.max
            var first = ""
            var second = ""
            var i = 0
            while (i + 1) < symbols.count {
                let left = symbols[i]
                let right = symbols[i + 1]
                if let rank = ranks[left + " " + right] {
                    if rank < best {
                        best = rank
                        first = left
                        second = right
                    }
                }
                i += 1
            }
            if best == Int.max {
                break
            }
            var merged: [String] = []
            var j = 0
            while j < symbols.count {
                if ((j + 1) < symbols.count) && (symbols[j] == first) && (symbols[j + 1] == second) {
                    merged.append(first + second)
                    j += 2
                } else {
                    merged.append(symbols[j])
                    j += 1
                }
            }
            symbols = merged
        }
        return symbols
    }

    func wordSymbols(_ scalars: [UInt32]) -> [String] {
        var out: [String] = []
        for word in clipSplitWords(scalars) {
            out += bpe(word)
        }
        return out
    }

    /// The BPE symbols of `text` (special tokens as themselves), before ids and the template.
    public func tokenize(_ text: String) throws -> [String] {
        let scalars = try clipNormalize(text, steps: steps)
        var out: [String] = []
        var start = 0
        var i = 0
        while i < scalars.count {
            var hit = -1
            var s = 0
            while (s < specials.count) && (hit < 0) {
                if clipHasPrefix(scalars, specials[s], at: i) {
                    hit = s
                }
                s += 1
            }
            if hit >= 0 {
                out += wordSymbols(Array(scalars[start..<i]))
                out.append(clipString(specials[hit]))
                i += specials[hit].count
                start = i
            } else {
                i += 1
            }
        }
        out += wordSymbols(Array(scalars[start..<scalars.count]))
        return out
    }

    /// input_ids of `text`: always `maxLength` long.
    public func encode(_ text: String) throws -> [Int] {
        let symbols = try tokenize(text)
        var ids: [Int] = []
        for symbol in symbols {
            if let id = vocab[symbol] {
                ids.append(id)
            } else if let unk = unkId {
                ids.append(unk)
            }
        }
        var out: [Int] = [bosId]
        var k = 0
        while (k < ids.count) && (k < (maxLength - 2)) {
            out.append(ids[k])
            k += 1
        }
        out.append(eosId)
        while out.count < maxLength {
            out.append(padId)
        }
        return out
    }
}
