import CryptoKit
import Foundation

/// Why a bundle was refused. Every message names the file and the problem.
public enum BundleError: Error, LocalizedError {
    case unsafePath(String)
    case notListed(String)
    case sizeMismatch(path: String, expected: Int, actual: Int)
    case shaMismatch(path: String, expected: String, actual: String)
    case invalid(String)

    public var errorDescription: String? {
        switch self {
        case .unsafePath(let path): return "refused path \(path): it escapes the bundle folder"
        case .notListed(let path): return "\(path) is not listed in manifest files[]"
        case .sizeMismatch(let path, let expected, let actual):
            return "\(path): size \(actual) bytes, manifest says \(expected)"
        case .shaMismatch(let path, let expected, let actual):
            return "\(path): sha256 mismatch (file \(actual.prefix(12))…, manifest \(expected.prefix(12))…)"
        case .invalid(let message): return message
        }
    }
}

/// A folder written by `cdx convert --target coreml`: manifest.json, .mlpackage directories, golden/*.bin.
/// Every path comes from the manifest and is resolved inside the folder (no absolute paths, no `..`, no symlink that
/// leads out); every file used is checked against the manifest's `files[]` (size and sha256) before it is read.
public final class BundleFolder: @unchecked Sendable {
    public static let manifestName = "manifest.json"

    public let root: URL
    public let manifest: Manifest
    public let manifestSha256: String
    private let listed: [String: Manifest.FileEntry]
    private var verified: Set<String> = []

    public init(root: URL) throws {
        self.root = root.standardizedFileURL.resolvingSymlinksInPath()
        let manifestURL = self.root.appendingPathComponent(Self.manifestName)
        let data: Data
        do {
            data = try Data(contentsOf: manifestURL)
        } catch {
            throw BundleError.invalid("\(manifestURL.path): cannot read the manifest (\(error.localizedDescription))")
        }
        do {
            manifest = try JSONDecoder().decode(Manifest.self, from: data)
        } catch {
            throw BundleError.invalid("manifest.json does not match the cdx manifest schema: \(error)")
        }
        guard manifest.manifestVersion == "1.0" else {
            throw BundleError.invalid("manifest_version \(manifest.manifestVersion): this app reads 1.0")
        }
        manifestSha256 = Self.hex(SHA256.hash(data: data))
        var byPath: [String: Manifest.FileEntry] = [:]
        for entry in manifest.files {
            _ = try Self.checkRelativePath(entry.path)
            byPath[entry.path] = entry
        }
        listed = byPath
    }

    /// Refuses empty, absolute, backslashed or `..`-containing relative paths; returns the components.
    public static func checkRelativePath(_ path: String) throws -> [String] {
        let parts = path.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        let bad = path.isEmpty || path.hasPrefix("/") || path.hasPrefix("~") || path.contains("\\")
            || path.contains("\0") || parts.contains("..") || parts.contains("") || path.contains(":")
        if bad { throw BundleError.unsafePath(path) }
        return parts
    }

    /// The URL of a manifest-relative path, refused unless it stays inside the bundle after resolving symlinks.
    public func resolve(_ path: String) throws -> URL {
        var url = root
        for part in try Self.checkRelativePath(path) where part != "." {
            url.appendPathComponent(part)
        }
        let resolved = url.resolvingSymlinksInPath().standardizedFileURL
        let rootPath = root.path.hasSuffix("/") ? root.path : root.path + "/"
        guard resolved.path.hasPrefix(rootPath) else { throw BundleError.unsafePath(path) }
        return resolved
    }

    /// Checks one listed file's size and sha256 (streamed, 1 MiB at a time); cached per path.
    public func verifyFile(_ path: String) throws {
        if verified.contains(path) { return }
        guard let entry = listed[path] else { throw BundleError.notListed(path) }
        let url = try resolve(path)
        let attributes = try FileManager.default.attributesOfItem(atPath: url.path)
        let size = (attributes[.size] as? NSNumber)?.intValue ?? -1
        guard size == entry.sizeBytes else {
            throw BundleError.sizeMismatch(path: path, expected: entry.sizeBytes, actual: size)
        }
        let handle = try FileHandle(forReadingFrom: url)
        defer { try? handle.close() }
        var hasher = SHA256()
        while let chunk = try handle.read(upToCount: 1 << 20), !chunk.isEmpty {
            hasher.update(data: chunk)
        }
        let digest = Self.hex(hasher.finalize())
        guard digest == entry.sha256.lowercased() else {
            throw BundleError.shaMismatch(path: path, expected: entry.sha256, actual: digest)
        }
        verified.insert(path)
    }

    /// Verifies a model's .mlpackage: every file the manifest lists under it, and no unlisted file inside it.
    public func verifyPackage(_ model: Manifest.ModelEntry) throws -> URL {
        let prefix = model.file + "/"
        let entries = manifest.files.filter { $0.path.hasPrefix(prefix) }
        guard !entries.isEmpty else { throw BundleError.notListed(model.file) }
        for entry in entries { try verifyFile(entry.path) }
        let packageURL = try resolve(model.file)
        let packagePath = packageURL.path + "/"
        if let walker = FileManager.default.enumerator(at: packageURL, includingPropertiesForKeys: [.isRegularFileKey]) {
            for case let url as URL in walker {
                let values = try url.resourceValues(forKeys: [.isRegularFileKey])
                guard values.isRegularFile == true else { continue }
                let full = url.resolvingSymlinksInPath().standardizedFileURL.path
                guard full.hasPrefix(packagePath) else { throw BundleError.unsafePath(url.path) }
                let relative = prefix + String(full.dropFirst(packagePath.count))
                if listed[relative] == nil { throw BundleError.notListed(relative) }
            }
        }
        return packageURL
    }

    /// A verified file's bytes.
    public func read(_ path: String) throws -> Data {
        try verifyFile(path)
        return try Data(contentsOf: try resolve(path))
    }

    static func hex<D: Sequence>(_ digest: D) -> String where D.Element == UInt8 {
        digest.map { String(format: "%02x", $0) }.joined()
    }
}
