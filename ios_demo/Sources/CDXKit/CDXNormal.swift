import Foundation

/// cdx-normal-v1: the seeded standard-normal generator every cdx side implements (spec: the docstring of cdx/rng.py).
///
/// The app draws `noise` (and any other random input) with it, so seed S on the phone is exactly the latent Python
/// drew for seed S — the bundle's golden inputs are cdx-normal-v1 with stream = the input's index in the manifest.
///
///     mix32(x) = lowbias32: x ^= x >> 16; x *= 0x7FEB352D; x ^= x >> 15; x *= 0x846CA68B; x ^= x >> 16  (mod 2^32)
///     key      = mix32(mix32(seed) ^ (stream * 0x9E3779B9 + 0x632BE5AB))                                  (mod 2^32)
///     element i: a = mix32(key ^ mix32(2i)), b = mix32(key ^ mix32(2i + 1))
///                z = Float(sqrt(-2 ln((a + 1) / 2^32)) * cos(2π · b / 2^32))   (Double math, one rounding to Float)
///
/// Integer steps use UInt32 with the wrapping operators `&*` / `&+` (the low 32 bits, like Python's `& 0xFFFFFFFF`).
/// Binary operators are parenthesised whenever two meet and calls never take a bare binary expression, so the order of
/// operations is explicit: tests/test_ios_demo.py evaluates mix32/streamKey/draws/gaussian from their tree-sitter parse
/// tree (Swift cannot run on Linux) and checks the results against tests/data/rng_vectors.json bit for bit.
public enum CDXNormalV1 {
    public static let name = "cdx-normal-v1"

    /// lowbias32 (Chris Wellons' hash prospector): a 32-bit bijection with strong avalanche.
    @inlinable
    public static func mix32(_ value: UInt32) -> UInt32 {
        var x = value
        x ^= (x >> 16)
        x = x &* 0x7FEB352D
        x ^= (x >> 15)
        x = x &* 0x846CA68B
        x ^= (x >> 16)
        return x
    }

    /// The per-(seed, stream) key.
    public static func streamKey(seed: UInt32, stream: UInt32) -> UInt32 {
        let salt = (stream &* 0x9E3779B9) &+ 0x632BE5AB
        return mix32(mix32(seed) ^ salt)
    }

    /// The two uint32 draws (a, b) behind element `index` of the stream with `key`.
    @inlinable
    public static func draws(key: UInt32, index: UInt32) -> (a: UInt32, b: UInt32) {
        let a = mix32(key ^ mix32(2 &* index))
        let b = mix32(key ^ mix32((2 &* index) &+ 1))
        return (a, b)
    }

    /// Box–Muller on one pair of draws: Double throughout, rounded to the nearest Float once at the end.
    @inlinable
    public static func gaussian(a: UInt32, b: UInt32) -> Float {
        let u1 = (Double(a) + 1.0) / 4294967296.0
        let u2 = Double(b) / 4294967296.0
        let logU1 = log(u1)
        let radius = (-2.0 * logU1).squareRoot()
        let angle = (2.0 * Double.pi) * u2
        let cosine = cos(angle)
        return Float(radius * cosine)
    }

    /// `count` standard normals (row-major over any shape) for `seed` and `stream`; both are taken modulo 2^32 like
    /// Python's `int(seed) & 0xFFFFFFFF`.
    public static func normal(seed: Int, count: Int, stream: Int = 0) -> [Float] {
        precondition(count >= 0 && count < (1 << 31), "cdx-normal-v1: at most 2^31 - 1 elements per tensor")
        let key = streamKey(seed: UInt32(truncatingIfNeeded: seed), stream: UInt32(truncatingIfNeeded: stream))
        var out = [Float](repeating: 0, count: count)
        for i in 0..<count {
            let pair = draws(key: key, index: UInt32(i))
            out[i] = gaussian(a: pair.a, b: pair.b)
        }
        return out
    }
}
