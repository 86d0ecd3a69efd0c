// swift-tools-version: 5.9
// The cdx iOS demo: CDXKit (manifest, sha256 checks, cdx-normal-v1, Core ML runner, results JSON), the SwiftUI app,
// a macOS benchmark CLI and the XCTest suite. See README.md.
//
// - Xcode 15+ (`open Package.swift`): the "CDX Demo" iOS app product (AppleProductTypes, as in an App Playground)
//   runs on an iPhone or the Simulator; set your team in the target's Signing settings.
// - Command line on a Mac: `swift test` (RNG vectors etc.), `swift run -c release cdx-coreml-bench BUNDLE`.
import PackageDescription

#if canImport(AppleProductTypes)
import AppleProductTypes
#endif

var products: [Product] = [
    .library(name: "CDXKit", targets: ["CDXKit"]),
    .executable(name: "cdx-coreml-bench", targets: ["cdx-coreml-bench"]),
]

#if canImport(AppleProductTypes)
products.append(
    .iOSApplication(
        name: "CDX Demo",
        targets: ["CDXDemoApp"],
        bundleIdentifier: "org.cdx.demo",
        teamIdentifier: "",
        displayVersion: "0.1.0",
        bundleVersion: "1",
        appIcon: .placeholder(icon: .sparkle),
        accentColor: .presetColor(.indigo),
        supportedDeviceFamilies: [.pad, .phone],
        supportedInterfaceOrientations: [.portrait, .landscapeRight, .landscapeLeft, .portraitUpsideDown(.when(deviceFamilies: [.pad]))]
    )
)
#endif

let package = Package(
    name: "CDXDemo",
    platforms: [.iOS("17.0"), .macOS("14.0")],
    products: products,
    targets: [
        .target(name: "CDXKit", path: "Sources/CDXKit"),
        .executableTarget(name: "CDXDemoApp", dependencies: ["CDXKit"], path: "Sources/CDXDemoApp"),
        .executableTarget(name: "cdx-coreml-bench", dependencies: ["CDXKit"], path: "Sources/cdx-coreml-bench"),
        .testTarget(name: "CDXKitTests", dependencies: ["CDXKit"], path: "Tests/CDXKitTests"),
    ]
)
