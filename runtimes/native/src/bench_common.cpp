// See bench_common.hpp. Everything here is plain C++17 + nlohmann/json + POSIX, so it builds unchanged for Linux,
// Android (NDK) and iOS/macOS command-line targets.
#include "bench_common.hpp"

#include <sys/resource.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <iostream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>

#if defined(__ANDROID__)
#include <sys/system_properties.h>
#endif

#include "cdx_rng.hpp"
#include "sha256.hpp"

namespace cdx {

using json = nlohmann::ordered_json;

namespace {

constexpr const char* kSchema = "cdx-device-results/1";
constexpr double kPsnrCap = 999.0;  // JSON has no infinity; same cap as cdx/benchmarks/device.py

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Args {
  std::string bundle;
  std::vector<std::string> models;
  int runs = 20;
  int warmup = 3;
  int threads = 1;
  std::string out = "-";
  double tolerance = 1e-4;
  double min_psnr = 30.0;
  bool gate = true;
  bool has_seed = false;
  uint64_t seed = 0;
  bool has_class = false;
  int64_t class_label = 0;
  std::string save_output;
  std::string device_model;
  std::string rng_vectors;
  bool quiet = false;
};

void usage(const Backend& b, std::ostream& os) {
  os << "usage: " << b.program << " BUNDLE_DIR [options]\n"
     << "  Runs the " << b.runtime << " models of a `cdx convert` bundle (formats:";
  for (const auto& f : b.formats) os << ' ' << f;
  os << ") on their golden inputs and benchmarks them.\n"
     << "  --model NAME        run only this manifest model (repeatable; default: every model of this runner's formats)\n"
     << "  --runs N            timed runs on golden sample 0 (default 20)\n"
     << "  --warmup K          untimed warm-up runs before them (default 3)\n"
     << "  --threads T         intra-op threads (default 1)\n"
     << "  --out FILE          write the cdx-device-results/1 JSON here (default: stdout)\n"
     << "  --tolerance X       fp32 gate: golden max_abs must be <= X (default 1e-4)\n"
     << "  --min-psnr DB       quantized gate: golden PSNR must be >= DB (default 30)\n"
     << "  --no-gate           report golden metrics but never fail on them\n"
     << "  --seed S            also generate from seed S: random inputs from cdx-normal-v1 (stream = input index)\n"
     << "  --class C           class label for --seed (default 0)\n"
     << "  --save-output DIR   write --seed outputs as raw little-endian DIR/<model>.<output>.seed<S>.class<C>.bin\n"
     << "  --device-model STR  device.model in the results (default: the OS's model name, e.g. linux-x86_64)\n"
     << "  --quiet             no per-model summary on stderr\n"
     << "  --rng-selftest FILE check cdx-normal-v1 against tests/data/rng_vectors.json and exit\n"
     << "exit codes: 0 ok, 1 error (one line on stderr), 2 usage, 3 golden gate failed\n";
}

long long parse_int(const std::string& flag, const std::string& value, long long lo, long long hi) {
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(value.c_str(), &end, 10);
  if (value.empty() || *end != '\0' || errno != 0 || v < lo || v > hi) {
    throw Error(flag + ": expected an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got '" +
                value + "'");
  }
  return v;
}

double parse_double(const std::string& flag, const std::string& value) {
  char* end = nullptr;
  const double v = std::strtod(value.c_str(), &end);
  if (value.empty() || *end != '\0' || !std::isfinite(v) || v < 0) {
    throw Error(flag + ": expected a non-negative number, got '" + value + "'");
  }
  return v;
}

// Returns false when the caller should exit with `code` (help / usage error).
bool parse_args(int argc, char** argv, const Backend& b, Args& a, int& code) {
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&](const char* flag) -> std::string {
      if (i + 1 >= argc) throw Error(std::string(flag) + ": missing value");
      return argv[++i];
    };
    if (arg == "-h" || arg == "--help") {
      usage(b, std::cout);
      code = 0;
      return false;
    } else if (arg == "--model") {
      a.models.push_back(value("--model"));
    } else if (arg == "--runs") {
      a.runs = static_cast<int>(parse_int(arg, value("--runs"), 1, 1000000));
    } else if (arg == "--warmup") {
      a.warmup = static_cast<int>(parse_int(arg, value("--warmup"), 0, 1000000));
    } else if (arg == "--threads") {
      a.threads = static_cast<int>(parse_int(arg, value("--threads"), 1, 1024));
    } else if (arg == "--out") {
      a.out = value("--out");
    } else if (arg == "--tolerance") {
      a.tolerance = parse_double(arg, value("--tolerance"));
    } else if (arg == "--min-psnr") {
      a.min_psnr = parse_double(arg, value("--min-psnr"));
    } else if (arg == "--no-gate") {
      a.gate = false;
    } else if (arg == "--seed") {
      a.seed = static_cast<uint64_t>(parse_int(arg, value("--seed"), 0, 0xFFFFFFFFLL));
      a.has_seed = true;
    } else if (arg == "--class") {
      a.class_label = parse_int(arg, value("--class"), 0, INT32_MAX);
      a.has_class = true;
    } else if (arg == "--save-output") {
      a.save_output = value("--save-output");
    } else if (arg == "--device-model") {
      a.device_model = value("--device-model");
    } else if (arg == "--quiet") {
      a.quiet = true;
    } else if (arg == "--rng-selftest") {
      a.rng_vectors = value("--rng-selftest");
    } else if (!arg.empty() && arg[0] == '-') {
      throw Error("unknown option " + arg + " (see --help)");
    } else {
      positional.push_back(arg);
    }
  }
  if (!a.rng_vectors.empty()) return true;
  if (positional.size() != 1) {
    usage(b, std::cerr);
    code = 2;
    return false;
  }
  a.bundle = positional[0];
  if (a.has_class && !a.has_seed) throw Error("--class needs --seed");
  if (!a.save_output.empty() && !a.has_seed) throw Error("--save-output needs --seed");
  return true;
}

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error(path + ": cannot open");
  std::vector<uint8_t> data((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (f.bad()) throw Error(path + ": read error");
  return data;
}

std::string real_path(const std::string& path) {
  char buf[PATH_MAX];
  if (!::realpath(path.c_str(), buf)) throw Error(path + ": " + std::strerror(errno));
  return buf;
}

// A manifest-relative path inside the bundle: no absolute paths, no `..`, and no symlink out of it.
std::string resolve_inside(const std::string& root_real, const std::string& rel, const std::string& what) {
  if (rel.empty()) throw Error(what + ": empty path in the manifest");
  if (rel[0] == '/' || rel.find('\\') != std::string::npos) {
    throw Error(what + ": path '" + rel + "' escapes the bundle (absolute or backslash path refused)");
  }
  std::stringstream parts(rel);
  std::string part;
  while (std::getline(parts, part, '/')) {
    if (part == "..") throw Error(what + ": path '" + rel + "' escapes the bundle ('..' refused)");
  }
  const std::string full = real_path(root_real + "/" + rel);
  if (full.compare(0, root_real.size() + 1, root_real + "/") != 0) {
    throw Error(what + ": path '" + rel + "' resolves outside the bundle (" + full + ")");
  }
  return full;
}

std::vector<int64_t> shape_of(const json& spec, const std::string& where) {
  std::vector<int64_t> shape;
  for (const auto& d : spec.at("shape")) {
    if (!d.is_number_integer() || d.get<int64_t>() < 0) {
      throw Error(where + ": shape has a non-integer or dynamic dimension (" + spec.at("shape").dump() + ")");
    }
    shape.push_back(d.get<int64_t>());
  }
  return shape;
}

template <typename T>
T load_as(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

double half_to_double(uint16_t h) {
  const int sign = (h >> 15) & 1, exp = (h >> 10) & 0x1F, frac = h & 0x3FF;
  double v;
  if (exp == 0) {
    v = std::ldexp(frac, -24);
  } else if (exp == 31) {
    v = frac ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  } else {
    v = std::ldexp(frac + 1024, exp - 25);
  }
  return sign ? -v : v;
}

double element(const Tensor& t, size_t i) {
  const uint8_t* p = t.data.data() + i * dtype_size(t.dtype);
  if (t.dtype == "float32") return load_as<float>(p);
  if (t.dtype == "float64") return load_as<double>(p);
  if (t.dtype == "float16") return half_to_double(load_as<uint16_t>(p));
  if (t.dtype == "int64") return static_cast<double>(load_as<int64_t>(p));
  if (t.dtype == "int32") return load_as<int32_t>(p);
  if (t.dtype == "int8") return load_as<int8_t>(p);
  if (t.dtype == "uint8") return *p;
  if (t.dtype == "bool") return *p ? 1.0 : 0.0;
  throw Error("unsupported dtype " + t.dtype);
}

// Store `value` into element i of `t` in t's dtype (inputs built from --seed/--class and schedule constants).
void set_element(Tensor& t, size_t i, double value) {
  uint8_t* p = t.data.data() + i * dtype_size(t.dtype);
  auto store = [p](auto v) { std::memcpy(p, &v, sizeof v); };
  if (t.dtype == "float32") store(static_cast<float>(value));
  else if (t.dtype == "float64") store(value);
  else if (t.dtype == "int64") store(static_cast<int64_t>(value));
  else if (t.dtype == "int32") store(static_cast<int32_t>(value));
  else if (t.dtype == "int8") store(static_cast<int8_t>(value));
  else if (t.dtype == "uint8" || t.dtype == "bool") store(static_cast<uint8_t>(value));
  else throw Error(t.name + ": cannot build a " + t.dtype + " input");
}

struct Stats {
  double median, p90, p99, min, max;
};

// numpy.percentile's default (linear interpolation between closest ranks).
double percentile(std::vector<double> sorted, double q) {
  const double pos = q / 100.0 * static_cast<double>(sorted.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - static_cast<double>(lo));
}

Stats stats_of(std::vector<double> ms) {
  std::sort(ms.begin(), ms.end());
  return {percentile(ms, 50), percentile(ms, 90), percentile(ms, 99), ms.front(), ms.back()};
}

double now_ms() {
  using clock = std::chrono::steady_clock;
  return std::chrono::duration<double, std::milli>(clock::now().time_since_epoch()).count();
}

double peak_memory_mb() {
  struct rusage usage {};
  getrusage(RUSAGE_SELF, &usage);
#if defined(__APPLE__)
  return static_cast<double>(usage.ru_maxrss) / (1024.0 * 1024.0);  // bytes on Darwin
#else
  return static_cast<double>(usage.ru_maxrss) / 1024.0;  // KiB on Linux/Android
#endif
}

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S+00:00", &tm);
  return buf;
}

#if defined(__ANDROID__)
std::string android_property(const char* name) {
  char value[PROP_VALUE_MAX] = {0};
  return __system_property_get(name, value) > 0 ? std::string(value) : std::string();
}
#endif

json device_info(const std::string& override_model) {
  struct utsname u {};
  uname(&u);
  json device;
  std::string model = override_model, os = u.sysname, soc;
#if defined(__ANDROID__)
  os = "Android";
  if (model.empty()) model = android_property("ro.product.manufacturer") + " " + android_property("ro.product.model");
  soc = android_property("ro.soc.model");
  const std::string release = android_property("ro.build.version.release");
#else
  const std::string release = u.release;
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);) {
    if (line.rfind("model name", 0) == 0 || line.rfind("Hardware", 0) == 0) {
      soc = line.substr(line.find(':') + 1);
      soc.erase(0, soc.find_first_not_of(' '));
      break;
    }
  }
#endif
  if (model.empty() || model == " ") {
    std::string sys = u.sysname;
    std::transform(sys.begin(), sys.end(), sys.begin(), [](unsigned char c) { return std::tolower(c); });
    model = sys + "-" + u.machine;
  }
  device["model"] = model;
  device["os"] = os;
  if (!release.empty()) device["os_version"] = release;
  if (!soc.empty()) device["soc"] = soc;
  device["abi"] = u.machine;
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  if (pages > 0 && page > 0) {
    device["ram_gb"] = std::round(static_cast<double>(pages) * static_cast<double>(page) / (1 << 30) * 10) / 10;
  }
  return device;
}

struct Compare {
  double max_abs = 0;
  double psnr_db = kPsnrCap;
  bool finite = true;
};

// Max-abs and PSNR of `ours` vs `ref` over all samples; peak = the output's declared range width, else the
// reference's peak-to-peak (cdx/convert/parity.py psnr_peak), else 1.
Compare compare(const std::vector<double>& ref, const std::vector<double>& ours, const json& spec) {
  Compare c;
  double sq = 0, lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (!std::isfinite(ours[i])) c.finite = false;
    const double d = std::fabs(ref[i] - ours[i]);
    c.max_abs = std::max(c.max_abs, d);
    sq += d * d;
    lo = std::min(lo, ref[i]);
    hi = std::max(hi, ref[i]);
  }
  double peak = 1.0;
  if (spec.contains("range") && spec["range"].size() == 2) {
    peak = spec["range"][1].get<double>() - spec["range"][0].get<double>();
  } else if (hi > lo) {
    peak = hi - lo;
  }
  const double mse = ref.empty() ? 0 : sq / static_cast<double>(ref.size());
  c.psnr_db = mse == 0 ? kPsnrCap : std::min(10.0 * std::log10(peak * peak / mse), kPsnrCap);
  if (!c.finite) {
    c.max_abs = std::numeric_limits<double>::infinity();
    c.psnr_db = -kPsnrCap;
  }
  return c;
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

struct ModelResult {
  json result;
  bool gate_ok = true;
};

size_t per_sample(const Tensor& t);

// A model entry whose files passed the integrity checks, with its golden data in memory.
struct Prepared {
  json model;
  ModelSpec spec;
  size_t count = 0;
  std::vector<std::vector<uint8_t>> golden_in, golden_out;
};

Prepared prepare_model(const Args& a, const std::string& root, const json& model,
                       const std::map<std::string, std::string>& sha_of) {
  const std::string name = model.at("name").get<std::string>();
  const std::string where = "model " + name;
  auto verify = [&](const std::string& rel) {
    const std::string path = resolve_inside(root, rel, where);
    const auto it = sha_of.find(rel);
    if (it == sha_of.end()) throw Error(a.bundle + ": " + rel + " (" + where + ") is not listed in the manifest's files[]");
    const std::string actual = sha256_file(path);
    if (actual != it->second) {
      throw Error(path + ": sha256 mismatch (manifest " + it->second.substr(0, 16) + "..., file " +
                  actual.substr(0, 16) + "...): refusing to run a modified model bundle");
    }
    return path;
  };

  ModelSpec spec;
  spec.name = name;
  spec.format = model.at("format").get<std::string>();
  spec.precision = model.value("precision", std::string("fp32"));
  spec.path = verify(model.at("file").get<std::string>());
  for (const auto& s : model.at("inputs")) {
    spec.inputs.push_back({s.at("name").get<std::string>(), s.at("dtype").get<std::string>(),
                           shape_of(s, where + " input " + s.at("name").get<std::string>()), {}});
    dtype_size(spec.inputs.back().dtype);
  }
  for (const auto& s : model.at("outputs")) {
    spec.outputs.push_back({s.at("name").get<std::string>(), s.at("dtype").get<std::string>(),
                            shape_of(s, where + " output " + s.at("name").get<std::string>()), {}});
    dtype_size(spec.outputs.back().dtype);
  }

  // Golden data: every seed's sample stacked on axis 0 of one raw little-endian file per tensor.
  const json& golden = model.at("golden");
  const size_t count = golden.at("seeds").size();
  if (count == 0) throw Error(where + ": golden.seeds is empty");
  auto load_golden = [&](const std::vector<Tensor>& specs, const json& files, const char* kind) {
    std::vector<std::vector<uint8_t>> data;
    for (const auto& t : specs) {
      if (!files.contains(t.name)) throw Error(where + ": golden." + kind + " has no file for '" + t.name + "'");
      const std::string rel = files.at(t.name).get<std::string>();
      const std::string path = verify(rel);
      data.push_back(read_bytes(path));
      const size_t expected = count * per_sample(t) * dtype_size(t.dtype);
      if (data.back().size() != expected) {
        throw Error(path + ": " + std::to_string(data.back().size()) + " bytes, expected " + std::to_string(expected) +
                    " (" + std::to_string(count) + " samples of " + t.dtype + " " + t.name + ")");
      }
    }
    return data;
  };
  Prepared p;
  p.model = model;
  p.count = count;
  p.golden_in = load_golden(spec.inputs, golden.at("inputs"), "inputs");
  p.golden_out = load_golden(spec.outputs, golden.at("outputs"), "outputs");
  p.spec = std::move(spec);
  return p;
}

size_t per_sample(const Tensor& t) {
  std::vector<int64_t> rest(t.shape.begin() + (t.shape.empty() ? 0 : 1), t.shape.end());
  return static_cast<size_t>(numel_of(rest));
}

ModelResult run_model(const Args& a, const Backend& b, const json& manifest, const Prepared& p) {
  const json& model = p.model;
  const ModelSpec& spec = p.spec;
  const std::string& name = spec.name;
  const std::string where = "model " + name;
  const size_t count = p.count;
  const auto& golden_in = p.golden_in;
  const auto& golden_out = p.golden_out;
  auto sample = [&](size_t k) {
    std::vector<Tensor> inputs;
    for (size_t j = 0; j < spec.inputs.size(); ++j) {
      Tensor t = spec.inputs[j];
      if (!t.shape.empty()) t.shape[0] = 1;
      const size_t bytes = per_sample(spec.inputs[j]) * dtype_size(t.dtype);
      t.data.assign(golden_in[j].begin() + static_cast<std::ptrdiff_t>(k * bytes),
                    golden_in[j].begin() + static_cast<std::ptrdiff_t>((k + 1) * bytes));
      inputs.push_back(std::move(t));
    }
    return inputs;
  };
  auto check_outputs = [&](const std::vector<Tensor>& outs) {
    if (outs.size() != spec.outputs.size()) {
      throw Error(where + ": runtime returned " + std::to_string(outs.size()) + " outputs, manifest lists " +
                  std::to_string(spec.outputs.size()));
    }
    for (size_t j = 0; j < outs.size(); ++j) {
      if (outs[j].numel() != per_sample(spec.outputs[j])) {
        throw Error(where + " output " + spec.outputs[j].name + ": runtime gave " + std::to_string(outs[j].numel()) +
                    " elements, manifest shape has " + std::to_string(per_sample(spec.outputs[j])));
      }
    }
  };

  double t0 = now_ms();
  std::unique_ptr<Session> session = b.open(spec, a.threads);
  const double cold_load_ms = now_ms() - t0;

  std::vector<std::vector<double>> ours(spec.outputs.size()), ref(spec.outputs.size());
  double first_run_ms = 0;
  for (size_t k = 0; k < count; ++k) {
    const auto inputs = sample(k);
    t0 = now_ms();
    const auto outs = session->run(inputs);
    if (k == 0) first_run_ms = now_ms() - t0;
    check_outputs(outs);
    for (size_t j = 0; j < outs.size(); ++j) {
      for (size_t i = 0; i < outs[j].numel(); ++i) ours[j].push_back(element(outs[j], i));
    }
  }
  for (size_t j = 0; j < spec.outputs.size(); ++j) {
    Tensor g = spec.outputs[j];
    g.data = golden_out[j];
    for (size_t i = 0; i < g.data.size() / dtype_size(g.dtype); ++i) ref[j].push_back(element(g, i));
  }
  // Golden metrics: the worst over outputs (one output per cdx model, so this is that output's).
  Compare worst;
  bool first = true;
  for (size_t j = 0; j < spec.outputs.size(); ++j) {
    const Compare c = compare(ref[j], ours[j], model.at("outputs")[j]);
    if (first || c.max_abs > worst.max_abs) worst.max_abs = c.max_abs;
    if (first || c.psnr_db < worst.psnr_db) worst.psnr_db = c.psnr_db;
    worst.finite = worst.finite && c.finite;
    first = false;
  }

  // Latency: warm-up, then timed runs on sample 0.
  const auto bench_inputs = sample(0);
  for (int i = 0; i < a.warmup; ++i) session->run(bench_inputs);
  std::vector<double> timings;
  for (int i = 0; i < a.runs; ++i) {
    t0 = now_ms();
    session->run(bench_inputs);
    timings.push_back(now_ms() - t0);
  }
  const Stats st = stats_of(timings);

  // Gate: fp32 models must match golden to --tolerance; quantized ones must keep --min-psnr.
  const bool fp32 = spec.precision == "fp32";
  std::string gate = "gate off";
  bool gate_ok = true;
  if (a.gate) {
    gate_ok = worst.finite && (fp32 ? worst.max_abs <= a.tolerance : worst.psnr_db >= a.min_psnr);
    gate = fp32 ? "max_abs <= " + fmt("%g", a.tolerance) : "PSNR >= " + fmt("%g", a.min_psnr) + " dB";
    gate = (gate_ok ? "OK (" : "FAILED (") + gate + ")";
  }

  const std::string backend_name =
      b.backend_for ? b.backend_for(model.value("export", json::object()).value("delegate", std::string()))
                    : b.backend;
  json r;
  r["model"] = name;
  r["runtime"] = b.runtime;
  r["backend"] = backend_name;
  r["threads"] = a.threads;
  r["cold_load_ms"] = cold_load_ms;
  r["first_run_ms"] = first_run_ms;
  r["latency"] = {{"median_ms", st.median}, {"p90_ms", st.p90}, {"p99_ms", st.p99},
                  {"min_ms", st.min},       {"max_ms", st.max}, {"runs", a.runs}};
  r["peak_memory_mb"] = peak_memory_mb();
  r["golden"] = {{"samples", count},
                 {"max_abs", worst.finite ? worst.max_abs : 1e308},
                 {"psnr_db", worst.psnr_db}};

  if (!a.quiet) {
    std::cerr << "[" << b.program << "] " << name << " (" << spec.format << ", " << spec.precision << ", "
              << backend_name << ", " << a.threads << " thread" << (a.threads == 1 ? "" : "s") << "): load "
              << fmt("%.2f", cold_load_ms) << " ms, first run " << fmt("%.3f", first_run_ms) << " ms, median "
              << fmt("%.3f", st.median) << " ms (p90 " << fmt("%.3f", st.p90) << ", min " << fmt("%.3f", st.min)
              << ") over " << a.runs << " runs; golden " << count << " samples max_abs " << fmt("%.3g", worst.max_abs)
              << ", PSNR " << fmt("%.1f", worst.psnr_db) << " dB: " << gate << "\n";
  }

  // --seed / --class: the inputs a phone builds from a seed alone (cdx/convert/golden.py manifest_inputs).
  if (a.has_seed) {
    const json& conditioning = manifest.value("conditioning", json::object());
    const json first_step = manifest.contains("schedule") && !manifest["schedule"].value("steps", json::array()).empty()
                                ? manifest["schedule"]["steps"][0]
                                : json::object();
    std::vector<Tensor> inputs;
    for (size_t stream = 0; stream < spec.inputs.size(); ++stream) {
      Tensor t = spec.inputs[stream];
      const size_t n = static_cast<size_t>(numel_of(t.shape));
      t.data.assign(n * dtype_size(t.dtype), 0);
      if (t.name == "class_label") {
        const int64_t classes = conditioning.value("num_classes", int64_t{0});
        if (classes > 0 && a.class_label >= classes) {
          throw Error(where + ": --class " + std::to_string(a.class_label) + " out of range (" +
                      std::to_string(classes) + " classes)");
        }
        for (size_t i = 0; i < n; ++i) set_element(t, i, static_cast<double>(a.class_label));
      } else if (t.name == "guidance_scale") {
        const double w = conditioning.value("guidance", json::object()).value("default", 8.0);
        for (size_t i = 0; i < n; ++i) set_element(t, i, w);
      } else if (first_step.contains(t.name) && first_step[t.name].is_number()) {
        for (size_t i = 0; i < n; ++i) set_element(t, i, first_step[t.name].get<double>());
      } else {
        if (t.dtype != "float32") throw Error(where + " input " + t.name + ": cdx-normal-v1 draws float32, not " + t.dtype);
        rng::normal(a.seed, static_cast<uint32_t>(stream), reinterpret_cast<float*>(t.data.data()), n);
      }
      inputs.push_back(std::move(t));
    }
    const auto outs = session->run(inputs);
    check_outputs(outs);
    for (size_t j = 0; j < outs.size(); ++j) {
      double lo = std::numeric_limits<double>::infinity(), hi = -lo, sum = 0;
      for (size_t i = 0; i < outs[j].numel(); ++i) {
        const double v = element(outs[j], i);
        lo = std::min(lo, v);
        hi = std::max(hi, v);
        sum += v;
      }
      std::string saved;
      if (!a.save_output.empty()) {
        saved = a.save_output + "/" + name + "." + outs[j].name + ".seed" + std::to_string(a.seed) + ".class" +
                std::to_string(a.class_label) + ".bin";
        std::ofstream f(saved, std::ios::binary);
        f.write(reinterpret_cast<const char*>(outs[j].data.data()), static_cast<std::streamsize>(outs[j].data.size()));
        if (!f) throw Error(saved + ": cannot write");
      }
      if (!a.quiet) {
        std::cerr << "[" << b.program << "] " << name << " seed " << a.seed << " class " << a.class_label << ": "
                  << outs[j].name << " min " << fmt("%.4f", lo) << " max " << fmt("%.4f", hi) << " mean "
                  << fmt("%.4f", sum / static_cast<double>(outs[j].numel()))
                  << (saved.empty() ? "" : " -> " + saved) << "\n";
      }
    }
  }
  return {r, gate_ok};
}

}  // namespace

size_t Tensor::numel() const { return data.size() / dtype_size(dtype); }

size_t dtype_size(const std::string& dtype) {
  static const std::map<std::string, size_t> sizes = {{"float32", 4}, {"float64", 8}, {"float16", 2}, {"int64", 8},
                                                      {"int32", 4},   {"int8", 1},    {"uint8", 1},   {"bool", 1}};
  const auto it = sizes.find(dtype);
  if (it == sizes.end()) throw Error("unsupported dtype '" + dtype + "'");
  return it->second;
}

int64_t numel_of(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string one_line(const std::string& text) {
  std::string s = text;
  for (char& c : s) {
    if (c == '\n' || c == '\r' || c == '\t') c = ' ';
  }
  while (!s.empty() && s.back() == ' ') s.pop_back();
  return s;
}

int rng_selftest(const std::string& program, const std::string& vectors_path) {
  try {
    std::ifstream f(vectors_path);
    if (!f) throw Error(vectors_path + ": cannot open");
    json v;
    try {
      v = json::parse(f);
    } catch (const json::exception& e) {
      throw Error(vectors_path + ": not JSON (" + e.what() + ")");
    }
    if (v.value("name", std::string()) != rng::kName) throw Error(vectors_path + ": not " + std::string(rng::kName) + " vectors");
    size_t checked = 0;
    for (const auto& pair : v.at("mix32")) {
      const uint32_t x = pair[0].get<uint32_t>(), want = pair[1].get<uint32_t>();
      if (rng::mix32(x) != want) {
        throw Error("mix32(" + std::to_string(x) + ") = " + std::to_string(rng::mix32(x)) + ", expected " +
                    std::to_string(want));
      }
      ++checked;
    }
    for (const auto& c : v.at("cases")) {
      const uint64_t seed = c.at("seed").get<uint64_t>();
      const uint32_t stream = c.at("stream").get<uint32_t>();
      const std::string label = "seed " + std::to_string(seed) + " stream " + std::to_string(stream);
      const uint32_t key = rng::stream_key(seed, stream);
      if (key != c.at("key").get<uint32_t>()) throw Error(label + ": key " + std::to_string(key) + " != " + c.at("key").dump());
      for (size_t i = 0; i < c.at("a").size(); ++i) {
        uint32_t a = 0, b = 0;
        rng::uniforms_at(key, static_cast<uint32_t>(i), &a, &b);
        if (a != c["a"][i].get<uint32_t>() || b != c["b"][i].get<uint32_t>()) {
          throw Error(label + ": uniforms differ at element " + std::to_string(i));
        }
      }
      const auto& bits = c.at("float32_bits");
      const auto values = rng::normal(seed, stream, bits.size());
      for (size_t i = 0; i < bits.size(); ++i) {
        if (rng::float_bits(values[i]) != bits[i].get<uint32_t>()) {
          throw Error(label + ": element " + std::to_string(i) + " = " + fmt("%.9g", values[i]) + " (bits " +
                      std::to_string(rng::float_bits(values[i])) + "), expected bits " + bits[i].dump());
        }
        ++checked;
      }
    }
    std::cout << program << ": " << rng::kName << " self-test passed (" << v.at("cases").size() << " cases, " << checked
              << " values bit-exact vs " << vectors_path << ")\n";
    return 0;
  } catch (const std::exception& e) {
    std::cerr << program << ": rng self-test FAILED: " << one_line(e.what()) << "\n";
    return 1;
  }
}

int run_main(int argc, char** argv, const Backend& b) {
  Args a;
  try {
    int code = 0;
    if (!parse_args(argc, argv, b, a, code)) return code;
  } catch (const std::exception& e) {
    std::cerr << b.program << ": error: " << one_line(e.what()) << "\n";
    return 2;
  }
  if (!a.rng_vectors.empty()) return rng_selftest(b.program, a.rng_vectors);

  try {
    const uint16_t probe = 1;
    if (*reinterpret_cast<const uint8_t*>(&probe) != 1) throw Error("big-endian hosts are not supported");
    const std::string root = real_path(a.bundle);
    const std::string manifest_path = root + "/manifest.json";
    const auto manifest_bytes = read_bytes(manifest_path);
    json manifest;
    try {
      manifest = json::parse(manifest_bytes.begin(), manifest_bytes.end());
    } catch (const json::exception& e) {
      throw Error(manifest_path + ": not JSON (" + e.what() + ")");
    }
    Sha256 h;
    h.update(manifest_bytes.data(), manifest_bytes.size());
    const std::string manifest_sha = h.hexdigest();

    std::map<std::string, std::string> sha_of;
    for (const auto& f : manifest.at("files")) sha_of[f.at("path").get<std::string>()] = f.at("sha256").get<std::string>();

    if (manifest.contains("rng") && manifest["rng"].value("name", std::string(rng::kName)) != rng::kName && a.has_seed) {
      throw Error(manifest_path + ": rng is " + manifest["rng"]["name"].dump() + ", this runner implements " + rng::kName);
    }

    std::vector<json> selected;
    for (const auto& m : manifest.at("models")) {
      const std::string name = m.at("name").get<std::string>(), format = m.at("format").get<std::string>();
      const bool ours = std::find(b.formats.begin(), b.formats.end(), format) != b.formats.end();
      if (a.models.empty()) {
        if (ours) selected.push_back(m);
      } else if (std::find(a.models.begin(), a.models.end(), name) != a.models.end()) {
        if (!ours) throw Error("model " + name + " is a ." + format + " model; " + b.program + " runs " + b.formats[0] + " models");
        selected.push_back(m);
      }
    }
    for (const auto& want : a.models) {
      if (std::none_of(selected.begin(), selected.end(), [&](const json& m) { return m["name"] == want; })) {
        throw Error(manifest_path + ": no model named '" + want + "'");
      }
    }
    if (selected.empty()) throw Error(manifest_path + ": no model of format " + b.formats[0] + " in this bundle");

    // Every selected model's files are checked before anything runs: a tampered bundle runs nothing.
    std::vector<Prepared> prepared;
    for (const auto& m : selected) {
      try {
        prepared.push_back(prepare_model(a, root, m, sha_of));
      } catch (const json::exception& e) {
        throw Error(manifest_path + ": model " + m.value("name", std::string("?")) + ": malformed entry (" + e.what() + ")");
      }
    }
    if (!a.quiet) std::cerr << "[" << b.program << "] " << b.runtime << " " << b.runtime_version << ", bundle " << root << "\n";

    json results = json::array();
    bool gate_ok = true;
    for (const auto& p : prepared) {
      try {
        auto r = run_model(a, b, manifest, p);
        results.push_back(r.result);
        gate_ok = gate_ok && r.gate_ok;
      } catch (const json::exception& e) {
        throw Error(manifest_path + ": model " + p.spec.name + ": malformed entry (" + e.what() + ")");
      }
    }

    json doc;
    doc["schema"] = kSchema;
    doc["created_at"] = utc_now();
    doc["device"] = device_info(a.device_model);
    doc["app"] = {{"name", b.program}, {"version", b.runtime + " " + b.runtime_version}};
    doc["bundle"] = {{"source_weights_sha256", manifest.at("source").at("weights_sha256")},
                     {"manifest_sha256", manifest_sha},
                     {"target", selected.front().value("target", selected.front().value("format", std::string()))}};
    doc["results"] = results;
    const std::string text = doc.dump(2) + "\n";
    if (a.out == "-") {
      std::cout << text;
    } else {
      const std::string tmp = a.out + ".tmp";
      {
        std::ofstream f(tmp, std::ios::binary);
        f << text;
        if (!f) throw Error(a.out + ": cannot write");
      }
      if (std::rename(tmp.c_str(), a.out.c_str()) != 0) throw Error(a.out + ": " + std::strerror(errno));
      if (!a.quiet) std::cerr << "[" << b.program << "] wrote " << a.out << "\n";
    }
    if (!gate_ok) {
      std::cerr << b.program << ": golden gate failed (see the summary above; --no-gate to report only)\n";
      return 3;
    }
    return 0;
  } catch (const json::exception& e) {
    std::cerr << b.program << ": error: " << a.bundle << "/manifest.json: " << one_line(e.what()) << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << b.program << ": error: " << one_line(e.what()) << "\n";
    return 1;
  }
}

}  // namespace cdx
