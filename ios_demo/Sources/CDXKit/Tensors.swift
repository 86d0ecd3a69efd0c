import Foundation

/// Host-side tensor values: floats as Float, integers as Int64 (whatever the file or model dtype).
public enum TensorValues {
    case floats([Float])
    case ints([Int64])

    public var count: Int {
        switch self {
        case .floats(let v): return v.count
        case .ints(let v): return v.count
        }
    }

    public var asFloats: [Float] {
        switch self {
        case .floats(let v): return v
        case .ints(let v): return v.map { Float($0) }
        }
    }

    /// Sample `index` of `samples` stacked on axis 0.
    public func sample(_ index: Int, of samples: Int) -> TensorValues {
        let per = count / samples
        let range = (index * per)..<((index + 1) * per)
        switch self {
        case .floats(let v): return .floats(Array(v[range]))
        case .ints(let v): return .ints(Array(v[range]))
        }
    }
}

/// Bytes per element of a manifest dtype.
public func bytesPerElement(_ dtype: String) throws -> Int {
    switch dtype {
    case "float32", "int32": return 4
    case "float16": return 2
    case "int64": return 8
    default: throw BundleError.invalid("dtype \(dtype) is not one of float32, float16, int32, int64")
    }
}

/// Decodes a raw little-endian golden file of manifest dtype `dtype` (no header; all seeds stacked on axis 0).
public func decodeRaw(_ data: Data, dtype: String, what: String) throws -> TensorValues {
    let width = try bytesPerElement(dtype)
    guard data.count % width == 0 else {
        throw BundleError.invalid("\(what): \(data.count) bytes is not a whole number of \(dtype)")
    }
    let bytes = [UInt8](data)
    let n = bytes.count / width
    func word(_ i: Int, _ size: Int) -> UInt64 {
        var value: UInt64 = 0
        for k in 0..<size { value |= UInt64(bytes[i * size + k]) << (8 * UInt64(k)) }
        return value
    }
    switch dtype {
    case "float32": return .floats((0..<n).map { Float(bitPattern: UInt32(truncatingIfNeeded: word($0, 4))) })
    case "float16": return .floats((0..<n).map { halfToFloat(UInt16(truncatingIfNeeded: word($0, 2))) })
    case "int32": return .ints((0..<n).map { Int64(Int32(bitPattern: UInt32(truncatingIfNeeded: word($0, 4)))) })
    default: return .ints((0..<n).map { Int64(bitPattern: word($0, 8)) })
    }
}

/// IEEE-754 binary16 → Float without the Float16 type (unavailable on x86_64 macOS).
public func halfToFloat(_ h: UInt16) -> Float {
    let sign = UInt32(h & 0x8000) << 16
    let exponent = Int((h >> 10) & 0x1F)
    let mantissa = UInt32(h & 0x3FF)
    if exponent == 0 {
        let magnitude = Float(mantissa) * Float(sign: .plus, exponent: -24, significand: 1)
        return sign != 0 ? -magnitude : magnitude
    }
    if exponent == 31 {
        return Float(bitPattern: sign | 0x7F80_0000 | (mantissa << 13))
    }
    return Float(bitPattern: sign | (UInt32(exponent + 112) << 23) | (mantissa << 13))
}

/// Max |a - b|; NaN when either has a NaN or the lengths differ.
public func maxAbsDiff(_ a: [Float], _ b: [Float]) -> Double {
    guard a.count == b.count else { return .nan }
    var worst = 0.0
    for i in 0..<a.count {
        let d = abs(Double(a[i]) - Double(b[i]))
        if d.isNaN { return .nan }
        worst = max(worst, d)
    }
    return worst
}

/// PSNR in dB with `peak` (the output's declared range, else the reference's peak-to-peak, as cdx does); +inf when equal.
public func psnr(reference: [Float], test: [Float], peak: Double) -> Double {
    guard reference.count == test.count, !reference.isEmpty else { return .nan }
    var sum = 0.0
    for i in 0..<reference.count {
        let d = Double(reference[i]) - Double(test[i])
        sum += d * d
    }
    let mse = sum / Double(reference.count)
    return mse == 0 ? .infinity : 10 * log10(peak * peak / mse)
}

/// The PSNR peak of an output spec (cdx.convert.parity.psnr_peak): its range width, else the reference's span.
public func psnrPeak(_ spec: Manifest.TensorSpec, reference: [Float]) -> Double {
    if let range = spec.range, range.count == 2 { return range[1] - range[0] }
    guard let lo = reference.min(), let hi = reference.max(), hi > lo else { return 1 }
    return Double(hi - lo)
}
