import SwiftUI

/// The cdx Core ML demo: open a `cdx convert --target coreml` folder, generate one-step images, benchmark.
@main
struct CDXDemoApp: App {
    @StateObject private var demo = DemoModel()

    var body: some Scene {
        WindowGroup {
            ContentView()
                .environmentObject(demo)
        }
    }
}
