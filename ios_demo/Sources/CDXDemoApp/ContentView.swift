import CDXKit
import SwiftUI
import UniformTypeIdentifiers

struct ContentView: View {
    @EnvironmentObject private var demo: DemoModel
    @State private var picking = false

    var body: some View {
        NavigationStack {
            Form {
                Section("Bundle") {
                    Button("Open bundle folder…") { picking = true }
                        .disabled(demo.busy)
                    if let bundle = demo.bundle {
                        Text(bundle.root.lastPathComponent).font(.caption.monospaced())
                        Picker("Model", selection: $demo.modelName) {
                            ForEach(demo.models) { model in
                                Text("\(model.name) (\(model.precision))").tag(model.name)
                            }
                        }
                        Picker("Compute units", selection: $demo.computeUnits) {
                            ForEach(ComputeUnitsChoice.allCases) { units in
                                Text(units.rawValue).tag(units)
                            }
                        }
                    }
                }
                if demo.bundle != nil {
                    Section("Generate") {
                        Stepper("Seed \(demo.seed)", value: $demo.seed, in: 0...Int(Int32.max))
                        if demo.hasClassInput {
                            Picker("Class", selection: $demo.classIndex) {
                                ForEach(Array(demo.classNames.enumerated()), id: \.offset) { index, name in
                                    Text("\(index): \(name)").tag(index)
                                }
                            }
                        }
                        if demo.hasPromptInput {
                            TextField("Prompt", text: $demo.prompt)
                                .autocorrectionDisabled()
                        }
                        if demo.hasGuidanceInput {
                            VStack(alignment: .leading) {
                                Text(String(format: "Guidance w %.1f", demo.guidance))
                                Slider(value: $demo.guidance, in: demo.guidanceRange)
                            }
                        }
                        Button("Generate") { demo.generate() }
                            .disabled(demo.busy)
                        if let image = demo.image {
                            Image(decorative: image, scale: 1)
                                .interpolation(.none)
                                .resizable()
                                .aspectRatio(contentMode: .fit)
                                .frame(maxWidth: 256, maxHeight: 256)
                        }
                        if !demo.lastLatency.isEmpty {
                            Text(demo.lastLatency).font(.caption.monospaced())
                        }
                    }
                    Section("Benchmark") {
                        Stepper("Warm-up runs \(demo.warmup)", value: $demo.warmup, in: 0...50)
                        Stepper("Timed runs \(demo.runs)", value: $demo.runs, in: 1...500, step: 5)
                        Button("Run benchmark + golden check") { demo.benchmark() }
                            .disabled(demo.busy)
                        if !demo.benchmarkSummary.isEmpty {
                            Text(demo.benchmarkSummary).font(.caption.monospaced())
                        }
                        if let url = demo.resultsURL {
                            ShareLink(item: url) { Label("Share results JSON", systemImage: "square.and.arrow.up") }
                        }
                    }
                }
                Section {
                    if demo.busy { ProgressView() }
                    Text(demo.status).font(.footnote)
                    if let error = demo.error {
                        Text("Refused / failed: \(error)").foregroundStyle(.red).font(.footnote)
                    }
                }
            }
            .navigationTitle("cdx one-step")
        }
        .fileImporter(isPresented: $picking, allowedContentTypes: [.folder]) { result in
            switch result {
            case .success(let url): demo.open(pickedFolder: url)
            case .failure(let error): demo.error = error.localizedDescription
            }
        }
        .task {
            // CDX_BUNDLE=/path/to/bundle (scheme environment, Simulator or Mac) opens a bundle at launch.
            if demo.bundle == nil, let path = ProcessInfo.processInfo.environment["CDX_BUNDLE"] {
                do { try demo.open(folder: URL(fileURLWithPath: path)) } catch { demo.error = "\(error)" }
            }
        }
    }
}
