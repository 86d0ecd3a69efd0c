plugins {
    id("com.android.application")
    id("org.jetbrains.kotlin.android")
}

val onnxruntimeVersion = providers.gradleProperty("cdx.onnxruntimeVersion").get()
val executorchVersion = providers.gradleProperty("cdx.executorchVersion").get()

android {
    namespace = "org.cdx.androiddemo"
    compileSdk = 35

    defaultConfig {
        applicationId = "org.cdx.androiddemo"
        minSdk = 26
        targetSdk = 35
        versionCode = 1
        versionName = "0.1.0"
        // The ExecuTorch AAR ships these two ABIs only.
        ndk { abiFilters += listOf("arm64-v8a", "x86_64") }
    }

    buildTypes {
        release {
            isMinifyEnabled = false
            // A sample app: sign release builds with the debug key so `installRelease` works out of the box.
            signingConfig = signingConfigs.getByName("debug")
        }
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlinOptions {
        jvmTarget = "17"
    }
    packaging {
        // Both runtimes ship libc++_shared.so.
        jniLibs.pickFirsts += "**/libc++_shared.so"
    }
}

dependencies {
    implementation("org.pytorch:executorch-android:$executorchVersion")
    implementation("com.microsoft.onnxruntime:onnxruntime-android:$onnxruntimeVersion")
    // fbjni / SoLoader, which executorch-android loads its JNI library with, come in transitively.
}
