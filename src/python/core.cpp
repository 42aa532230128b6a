// llama_tq._core: a small binding of the patched llama.cpp for tests, calibration and the tools.
//
// It loads a GGUF, creates a context with the KV-cache types under test, runs token batches and returns
// logits as numpy arrays. Errors that llama.cpp reports through its log (a context it refuses, a model
// it cannot read) become Python exceptions that carry the logged reason.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "ggml.h"
#include "llama.h"
#include "tq-ggml.h"
#include "tq-k-means.h"
#include "tq-kprof.h"
#include "tq-layer-types.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <cstdio>
#include <deque>
#include <fstream>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

namespace py = pybind11;

namespace {

// ---- logging: print what the user asked for, remember recent warnings/errors for exceptions --------

struct log_sink {
    std::mutex              mutex;
    int                     print_level = GGML_LOG_LEVEL_ERROR;  // print this level and above
    int                     last_level  = GGML_LOG_LEVEL_INFO;   // level that GGML_LOG_LEVEL_CONT continues
    std::deque<std::string> recent;                              // recent WARN/ERROR lines
};

log_sink & sink() {
    static log_sink s;
    return s;
}

void log_callback(ggml_log_level level, const char * text, void * /*user_data*/) {
    log_sink & s = sink();
    std::lock_guard<std::mutex> lock(s.mutex);
    const int lvl = level == GGML_LOG_LEVEL_CONT ? s.last_level : (int) level;
    if (level != GGML_LOG_LEVEL_CONT) {
        s.last_level = lvl;
    }
    if (lvl >= GGML_LOG_LEVEL_WARN) {
        std::string line(text);
        while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) {
            line.pop_back();
        }
        if (!line.empty()) {
            s.recent.push_back(line);
            if (s.recent.size() > 16) {
                s.recent.pop_front();
            }
        }
    }
    if (lvl >= s.print_level && s.print_level != GGML_LOG_LEVEL_NONE) {
        fputs(text, stderr);
        fflush(stderr);
    }
}

void clear_recent_log() {
    std::lock_guard<std::mutex> lock(sink().mutex);
    sink().recent.clear();
}

std::string recent_log() {
    std::lock_guard<std::mutex> lock(sink().mutex);
    std::string out;
    for (const auto & line : sink().recent) {
        out += "\n  " + line;
    }
    return out;
}

void set_log_level(const std::string & level) {
    static const std::vector<std::pair<std::string, int>> levels = {
        { "debug", GGML_LOG_LEVEL_DEBUG }, { "info", GGML_LOG_LEVEL_INFO }, { "warn", GGML_LOG_LEVEL_WARN },
        { "error", GGML_LOG_LEVEL_ERROR }, { "none", GGML_LOG_LEVEL_NONE },
    };
    for (const auto & [name, value] : levels) {
        if (name == level) {
            std::lock_guard<std::mutex> lock(sink().mutex);
            sink().print_level = value;
            return;
        }
    }
    throw py::value_error("unknown log level '" + level + "' (valid: debug, info, warn, error, none)");
}

// ---- KV-cache types --------------------------------------------------------------------------------

// The cache types llama.cpp's tools accept for -ctk/-ctv (common/arg.cpp, kv_cache_types), then ours.
const std::vector<ggml_type> & cache_types() {
    static const std::vector<ggml_type> types = [] {
        std::vector<ggml_type> t = {
            GGML_TYPE_F32,  GGML_TYPE_F16,    GGML_TYPE_BF16, GGML_TYPE_Q8_0, GGML_TYPE_Q4_0,
            GGML_TYPE_Q4_1, GGML_TYPE_IQ4_NL, GGML_TYPE_Q5_0, GGML_TYPE_Q5_1,
        };
        for (int tq = TQ_GGML_FIRST; tq <= GGML_TYPE_KTQP3; ++tq) {
            t.push_back((ggml_type) tq);
        }
        return t;
    }();
    return types;
}

std::vector<std::string> cache_type_names() {
    std::vector<std::string> names;
    for (ggml_type t : cache_types()) {
        names.emplace_back(ggml_type_name(t));
    }
    return names;
}

ggml_type cache_type_from_name(const std::string & name, const char * which) {
    for (ggml_type t : cache_types()) {
        if (name == ggml_type_name(t)) {
            return t;
        }
    }
    const ggml_type tq = tq_ggml_type_from_name(name.c_str());  // vtq2 = vtq2_2, ...
    if (tq != GGML_TYPE_COUNT) {
        return tq;
    }
    std::string valid;
    for (const auto & n : cache_type_names()) {
        valid += (valid.empty() ? "" : ", ") + n;
    }
    throw py::value_error(std::string("unknown ") + which + " cache type '" + name + "' (valid: " + valid + ")");
}

llama_flash_attn_type flash_attn_from(const py::object & value) {
    if (py::isinstance<py::bool_>(value)) {
        return value.cast<bool>() ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    }
    if (py::isinstance<py::str>(value)) {
        const auto s = value.cast<std::string>();
        if (s == "auto") {
            return LLAMA_FLASH_ATTN_TYPE_AUTO;
        }
        if (s == "on") {
            return LLAMA_FLASH_ATTN_TYPE_ENABLED;
        }
        if (s == "off") {
            return LLAMA_FLASH_ATTN_TYPE_DISABLED;
        }
    }
    throw py::value_error("flash_attn must be True, False, 'on', 'off' or 'auto'");
}

// ---- model -----------------------------------------------------------------------------------------

class model {
  public:
    model(const std::string & path, int n_gpu_layers) : path_(path) {
        std::ifstream probe(path, std::ios::binary);
        if (!probe) {
            throw py::value_error("cannot open model file '" + path + "'");
        }
        char magic[4] = {};
        probe.read(magic, 4);
        if (probe.gcount() != 4 || std::string(magic, 4) != "GGUF") {
            throw py::value_error("'" + path + "' is not a GGUF file (bad magic)");
        }
        llama_model_params params = llama_model_default_params();
        params.n_gpu_layers       = n_gpu_layers;
        clear_recent_log();
        {
            py::gil_scoped_release nogil;
            model_ = llama_model_load_from_file(path.c_str(), params);
        }
        if (!model_) {
            throw std::runtime_error("llama.cpp could not load '" + path + "'" + recent_log());
        }
    }

    ~model() { llama_model_free(model_); }

    model(const model &)             = delete;
    model & operator=(const model &) = delete;

    llama_model *       get() const { return model_; }
    const llama_vocab * vocab() const { return llama_model_get_vocab(model_); }

    int n_vocab() const { return llama_vocab_n_tokens(vocab()); }

    std::vector<llama_token> tokenize(const std::string & text, bool add_special, bool parse_special) const {
        const int32_t n_max = (int32_t) text.size() + 8;
        std::vector<llama_token> tokens(n_max);
        int32_t n = llama_tokenize(vocab(), text.data(), (int32_t) text.size(), tokens.data(), n_max, add_special,
                                   parse_special);
        if (n < 0) {
            tokens.resize(-n);
            n = llama_tokenize(vocab(), text.data(), (int32_t) text.size(), tokens.data(), -n, add_special,
                               parse_special);
        }
        if (n < 0) {
            throw std::runtime_error("tokenization failed");
        }
        tokens.resize(n);
        return tokens;
    }

    std::string detokenize(const std::vector<llama_token> & tokens, bool remove_special) const {
        check_tokens(tokens);
        std::string text(tokens.size() * 8 + 16, '\0');
        int32_t n = llama_detokenize(vocab(), tokens.data(), (int32_t) tokens.size(), text.data(),
                                     (int32_t) text.size(), remove_special, false);
        if (n < 0) {
            text.resize(-n);
            n = llama_detokenize(vocab(), tokens.data(), (int32_t) tokens.size(), text.data(), -n, remove_special,
                                 false);
        }
        text.resize(std::max<int32_t>(n, 0));
        return text;
    }

    void check_tokens(const std::vector<llama_token> & tokens) const {
        const int nv = n_vocab();
        for (llama_token t : tokens) {
            if (t < 0 || t >= nv) {
                throw py::value_error("token id " + std::to_string(t) + " is out of range [0, " + std::to_string(nv) +
                                      ")");
            }
        }
    }

    py::dict info() const {
        char desc[256] = {};
        llama_model_desc(model_, desc, sizeof(desc));
        py::dict d;
        d["path"]        = path_;
        d["desc"]        = std::string(desc);
        d["n_vocab"]     = n_vocab();
        d["n_ctx_train"] = llama_model_n_ctx_train(model_);
        d["n_embd"]      = llama_model_n_embd(model_);
        d["n_layer"]     = llama_model_n_layer(model_);
        d["n_head"]      = llama_model_n_head(model_);
        d["n_head_kv"]   = llama_model_n_head_kv(model_);
        d["n_params"]    = llama_model_n_params(model_);
        d["size_bytes"]  = llama_model_size(model_);
        d["bos"]         = llama_vocab_bos(vocab());
        d["add_bos"]     = llama_vocab_get_add_bos(vocab());
        d["rope_type"]   = (int) llama_model_rope_type(model_);  // LLAMA_ROPE_TYPE_*: -1 none, 0 norm, 2 neox
        d["rope_freq_scale_train"] = llama_model_rope_freq_scale_train(model_);
        return d;
    }

    // a GGUF metadata value as a string (llama.cpp's view of it), None if the model has no such key
    py::object meta(const std::string & key) const {
        char buf[512] = {};
        if (llama_model_meta_val_str(model_, key.c_str(), buf, sizeof(buf)) < 0) {
            return py::none();
        }
        return py::str(buf);
    }

  private:
    std::string   path_;
    llama_model * model_ = nullptr;
};

// ---- KV rows as the cache receives them -------------------------------------------------------------

// Observes the graph's SET_ROWS nodes into the KV cache: their source rows are K/V exactly as the cache
// type receives them (after upstream's Hadamard rotation, which is on for quantized cache types); with queries,
// also the Q operand of each layer's FLASH_ATTN_EXT (rotated the same way).
struct kv_collector {
    bool                                       active  = false;
    bool                                       queries = false;  // also the queries attention reads ("q.<layer>")
    std::map<std::string, std::vector<float>>  rows;   // "k.<layer>" / "v.<layer>" / "q.<layer>" -> row-major floats
    std::map<std::string, int64_t>             width;  // values per row

    // "k.5" for cache_k_l5 (or cache_swa_k_l5 -> "swa_k.5"), from the first of d and its view sources named
    // after a cache ("cache_k_l5 (view)"); empty if none
    static std::string cache_key(const ggml_tensor * d) {
        for (; d; d = d->view_src) {
            const std::string name = d->name;
            if (name.rfind("cache_", 0) == 0) {
                const size_t l = name.rfind("_l");
                if (l == std::string::npos || l < 7) {
                    return {};
                }
                return name.substr(6, l - 6) + "." + name.substr(l + 2, name.find_first_not_of("0123456789", l + 2) - (l + 2));
            }
        }
        return {};
    }

    // "k.5" for a SET_ROWS into cache_k_l5; with queries, "q.5" for the FLASH_ATTN_EXT whose K is a view of
    // cache_k_l5 ("swa_q.5" for cache_swa_k_l5); empty for any other node
    std::string key_of(const ggml_tensor * t) const {
        if (t->op == GGML_OP_SET_ROWS) {
            // src[0] = the rows, src[1] = their indices, src[2] = the destination (the node is a view of it)
            const std::string key = cache_key(t);
            return key.empty() ? cache_key(t->src[2]) : key;
        }
        if (queries && t->op == GGML_OP_FLASH_ATTN_EXT) {
            std::string key = cache_key(t->src[1]);
            const size_t dot = key.find('.');
            if (dot == std::string::npos || dot == 0 || key[dot - 1] != 'k') {
                return {};
            }
            key[dot - 1] = 'q';
            return key;
        }
        return {};
    }

    static bool callback(ggml_tensor * t, bool ask, void * user_data) {
        auto * self = (kv_collector *) user_data;
        if (ask) {
            return self->active && !self->key_of(t).empty();
        }
        const ggml_tensor * src = t->src[0];
        const std::string   key = self->key_of(t);
        // FLASH_ATTN_EXT: Q [head size, tokens, heads, sequences], f32, usually a permuted view, gathered into one
        // row per token and sequence holding its heads one after the other (as a K row holds the KV heads);
        // SET_ROWS: the contiguous rows, converted to float
        const bool is_q = t->op == GGML_OP_FLASH_ATTN_EXT;
        if (key.empty() || (is_q ? src->type != GGML_TYPE_F32 : !ggml_is_contiguous(src))) {
            return true;
        }
        const ggml_to_float_t to_float = ggml_get_type_traits(src->type)->to_float;
        if (!is_q && src->type != GGML_TYPE_F32 && !to_float) {
            return true;
        }
        std::vector<uint8_t> raw(ggml_nbytes(src));
        ggml_backend_tensor_get(src, raw.data(), 0, raw.size());
        auto &        out = self->rows[key];
        const int64_t n   = ggml_nelements(src);
        const size_t  at  = out.size();
        out.resize(at + n);
        float * o = out.data() + at;
        if (is_q) {
            for (int64_t i3 = 0; i3 < src->ne[3]; ++i3) {
                for (int64_t i1 = 0; i1 < src->ne[1]; ++i1) {
                    for (int64_t i2 = 0; i2 < src->ne[2]; ++i2) {
                        for (int64_t i0 = 0; i0 < src->ne[0]; ++i0) {
                            memcpy(o++, raw.data() + i0 * src->nb[0] + i1 * src->nb[1] + i2 * src->nb[2] +
                                            i3 * src->nb[3], sizeof(float));
                        }
                    }
                }
            }
            self->width[key] = src->ne[0] * src->ne[2];
            return true;
        }
        if (src->type == GGML_TYPE_F32) {
            memcpy(o, raw.data(), n * sizeof(float));
        } else {
            to_float(raw.data(), o, n);
        }
        self->width[key] = src->ne[0];
        return true;
    }
};

// ---- context ---------------------------------------------------------------------------------------

class context {
  public:
    context(std::shared_ptr<model> m, uint32_t n_ctx, uint32_t n_batch, uint32_t n_ubatch, const std::string & type_k,
            const std::string & type_v, const py::object & flash_attn, int n_threads, bool offload_kqv,
            bool collect_kv) :
        model_(std::move(m)) {
        if (n_ctx == 0) {
            throw py::value_error("n_ctx must be positive");
        }
        llama_context_params params = llama_context_default_params();
        params.n_ctx                = n_ctx;
        params.n_batch              = n_batch ? n_batch : n_ctx;
        params.n_ubatch             = n_ubatch ? n_ubatch : std::min<uint32_t>(params.n_batch, 512);
        params.n_seq_max            = 1;
        params.type_k               = cache_type_from_name(type_k, "K");
        params.type_v               = cache_type_from_name(type_v, "V");
        params.flash_attn_type      = flash_attn_from(flash_attn);
        params.offload_kqv          = offload_kqv;
        params.no_perf              = true;
        if (n_threads > 0) {
            params.n_threads       = n_threads;
            params.n_threads_batch = n_threads;
        }
        if (collect_kv) {
            collector_                = std::make_unique<kv_collector>();
            params.cb_eval            = kv_collector::callback;
            params.cb_eval_user_data  = collector_.get();
        }
        clear_recent_log();
        {
            py::gil_scoped_release nogil;
            ctx_ = llama_init_from_model(model_->get(), params);
        }
        if (!ctx_) {
            throw std::runtime_error("llama.cpp refused the context (type_k=" + type_k + ", type_v=" + type_v +
                                     ", n_ctx=" + std::to_string(n_ctx) + ")" + recent_log());
        }
        n_batch_ = llama_n_batch(ctx_);
        type_k_  = type_k;
        type_v_  = type_v;
    }

    ~context() { llama_free(ctx_); }

    context(const context &)             = delete;
    context & operator=(const context &) = delete;

    // Feed tokens at the next positions; return the logits of every token (all=True) or of the last one.
    py::array_t<float> decode(const std::vector<llama_token> & tokens, bool all) {
        if (tokens.empty()) {
            throw py::value_error("decode() needs at least one token");
        }
        model_->check_tokens(tokens);
        const int64_t n_ctx = llama_n_ctx(ctx_);
        if (n_past_ + (int64_t) tokens.size() > n_ctx) {
            throw py::value_error("decode() of " + std::to_string(tokens.size()) + " tokens after " +
                                  std::to_string(n_past_) + " would exceed n_ctx=" + std::to_string(n_ctx));
        }
        const int     n_vocab = model_->n_vocab();
        const int64_t n_out   = all ? (int64_t) tokens.size() : 1;

        py::array_t<float> logits({ n_out, (int64_t) n_vocab });
        float *            out = logits.mutable_data();

        std::string error;
        {
            py::gil_scoped_release nogil;
            clear_recent_log();
            llama_batch batch = llama_batch_init((int32_t) n_batch_, 0, 1);
            int64_t     row   = 0;
            for (size_t start = 0; start < tokens.size() && error.empty(); start += n_batch_) {
                const size_t n = std::min<size_t>(n_batch_, tokens.size() - start);
                batch.n_tokens = (int32_t) n;
                for (size_t i = 0; i < n; ++i) {
                    const bool last   = start + i + 1 == tokens.size();
                    batch.token[i]    = tokens[start + i];
                    batch.pos[i]      = (llama_pos) (n_past_ + start + i);
                    batch.n_seq_id[i] = 1;
                    batch.seq_id[i][0] = 0;
                    batch.logits[i]   = all || last;
                }
                const int32_t rc = llama_decode(ctx_, batch);
                if (rc != 0) {
                    error = "llama_decode failed with code " + std::to_string(rc) + recent_log();
                    break;
                }
                for (size_t i = 0; i < n; ++i) {
                    if (batch.logits[i]) {
                        const float * src = llama_get_logits_ith(ctx_, (int32_t) i);
                        std::copy(src, src + n_vocab, out + row * n_vocab);
                        ++row;
                    }
                }
            }
            llama_batch_free(batch);
        }
        if (!error.empty()) {
            throw std::runtime_error(error);
        }
        n_past_ += (int64_t) tokens.size();
        return logits;
    }

    // Decode tokens and return every K/V row written to the cache, keyed "k.<layer>" / "v.<layer>"; with queries, also
    // the queries of each layer's attention, "q.<layer>".
    py::dict collect_kv(const std::vector<llama_token> & tokens, bool queries) {
        if (!collector_) {
            throw py::value_error("create the context with collect_kv=True to collect K/V rows");
        }
        collector_->rows.clear();
        collector_->active  = true;
        collector_->queries = queries;
        try {
            decode(tokens, false);
        } catch (...) {
            collector_->active = false;
            throw;
        }
        collector_->active = false;
        py::dict out;
        for (auto & [key, values] : collector_->rows) {
            const int64_t      w = collector_->width[key];
            py::array_t<float> a({ (int64_t) values.size() / w, w });
            std::copy(values.begin(), values.end(), a.mutable_data());
            out[py::str(key)] = a;
        }
        collector_->rows.clear();
        return out;
    }

    void reset() {
        llama_memory_clear(llama_get_memory(ctx_), true);
        n_past_ = 0;
    }

    // llama-cli's context shift: drop positions [n_keep, n_keep + n_discard), move the later ones back by
    // n_discard (the K cache is re-roped on the next decode)
    void context_shift(int64_t n_keep, int64_t n_discard) {
        if (n_keep < 0 || n_discard <= 0 || n_keep + n_discard > n_past_) {
            throw py::value_error("context_shift(n_keep=" + std::to_string(n_keep) + ", n_discard=" +
                                  std::to_string(n_discard) + ") needs 0 <= n_keep, 0 < n_discard and n_keep + "
                                  "n_discard <= n_past=" + std::to_string(n_past_));
        }
        llama_memory_t mem = llama_get_memory(ctx_);
        if (!llama_memory_can_shift(mem)) {
            throw std::runtime_error("this context's memory cannot shift positions");
        }
        llama_memory_seq_rm(mem, 0, (llama_pos) n_keep, (llama_pos) (n_keep + n_discard));
        llama_memory_seq_add(mem, 0, (llama_pos) (n_keep + n_discard), (llama_pos) n_past_, (llama_pos) -n_discard);
        n_past_ -= n_discard;
    }

    size_t   memory_bytes() const { return llama_memory_size_bytes(ctx_); }
    uint32_t n_ctx() const { return llama_n_ctx(ctx_); }
    int64_t  n_past() const { return n_past_; }

    const std::string & type_k() const { return type_k_; }

    const std::string & type_v() const { return type_v_; }

  private:
    std::shared_ptr<model> model_;
    llama_context *        ctx_     = nullptr;
    uint32_t               n_batch_ = 0;
    int64_t                n_past_  = 0;
    std::string            type_k_;
    std::string            type_v_;

    std::unique_ptr<kv_collector> collector_;
};

// ---- codecs: any ggml type's row format, through ggml's own type traits ------------------------------

ggml_type any_type_from_name(const std::string & name) {
    for (int t = 0; t < GGML_TYPE_COUNT; ++t) {
        const ggml_type type = (ggml_type) t;
        if (ggml_blck_size(type) > 0 && name == ggml_type_name(type)) {
            return type;
        }
    }
    const ggml_type tq = tq_ggml_type_from_name(name.c_str());
    if (tq != GGML_TYPE_COUNT) {
        return tq;
    }
    throw py::value_error("unknown ggml type '" + name + "'");
}

void check_row_length(ggml_type type, int64_t n_per_row) {
    if (n_per_row <= 0 || n_per_row % ggml_blck_size(type) != 0) {
        throw py::value_error(std::string(ggml_type_name(type)) + " rows need a length that is a positive multiple of " +
                              std::to_string(ggml_blck_size(type)) + ", got " + std::to_string(n_per_row));
    }
}

using f32_array = py::array_t<float, py::array::c_style | py::array::forcecast>;
using u8_array  = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;

py::array_t<uint8_t> quantize_rows(const std::string & name, const f32_array & x) {
    const ggml_type type = any_type_from_name(name);
    if (x.ndim() != 2) {
        throw py::value_error("quantize() takes a 2-D array [n_rows, n_per_row]");
    }
    const int64_t nrows = x.shape(0), n_per_row = x.shape(1);
    check_row_length(type, n_per_row);
    const size_t         row_size = ggml_row_size(type, n_per_row);
    py::array_t<uint8_t> out({ (size_t) nrows, row_size });
    if (nrows > 0) {
        py::gil_scoped_release nogil;
        ggml_quantize_chunk(type, x.data(), out.mutable_data(), 0, nrows, n_per_row, nullptr);
    }
    return out;
}

py::array_t<float> dequantize_rows(const std::string & name, const u8_array & data, int64_t n_per_row) {
    const ggml_type type = any_type_from_name(name);
    check_row_length(type, n_per_row);
    const size_t row_size = ggml_row_size(type, n_per_row);
    if (data.ndim() != 2 || (size_t) data.shape(1) != row_size) {
        throw py::value_error("dequantize() of " + std::string(ggml_type_name(type)) + " rows of " +
                              std::to_string(n_per_row) + " values takes a 2-D uint8 array [n_rows, " +
                              std::to_string(row_size) + "]");
    }
    const auto * traits = ggml_get_type_traits(type);
    if (!traits->to_float) {
        throw py::value_error(std::string(ggml_type_name(type)) + " has no to_float");
    }
    const int64_t      nrows = data.shape(0);
    py::array_t<float> out({ nrows, n_per_row });
    {
        py::gil_scoped_release nogil;
        for (int64_t r = 0; r < nrows; ++r) {
            traits->to_float(data.data() + r * row_size, out.mutable_data() + r * n_per_row, n_per_row);
        }
    }
    return out;
}

// ggml's CPU dot product of each quantized row with y, as flash attention and mul_mat compute it.
py::array_t<float> vec_dot_rows(const std::string & name, const u8_array & data, const f32_array & y) {
    const ggml_type type   = any_type_from_name(name);
    const auto *    traits = ggml_get_type_traits_cpu(type);
    if (!traits->vec_dot || traits->vec_dot_type != GGML_TYPE_F32) {
        throw py::value_error(std::string(ggml_type_name(type)) + " has no CPU dot product with F32 vectors");
    }
    if (y.ndim() != 1) {
        throw py::value_error("vec_dot() takes a 1-D float vector y");
    }
    const int64_t n = y.shape(0);
    check_row_length(type, n);
    const size_t row_size = ggml_row_size(type, n);
    if (data.ndim() != 2 || (size_t) data.shape(1) != row_size) {
        throw py::value_error("vec_dot(): data must be [n_rows, " + std::to_string(row_size) + "] uint8");
    }
    py::array_t<float> out(data.shape(0));
    for (int64_t r = 0; r < data.shape(0); ++r) {
        traits->vec_dot((int) n, out.mutable_data() + r, 0, data.data() + r * row_size, 0, y.data(), 0, 1);
    }
    return out;
}

// per-layer cache types of a LLAMA_TQ_K_LAYERS / LLAMA_TQ_V_LAYERS rule string: the type name of every layer, None
// where no rule names it (the parser the runtime uses, tq-layer-types.h); ValueError with the reason
py::list layer_types(const std::string & spec, int n_layer) {
    if (n_layer <= 0) {
        throw py::value_error("n_layer must be positive");
    }
    std::vector<ggml_type> types((size_t) n_layer);
    char                   err[256] = {};
    if (tq_layer_types_parse(spec.c_str(), n_layer, types.data(), err, sizeof(err)) != 0) {
        throw py::value_error(err);
    }
    py::list out;
    for (const ggml_type t : types) {
        if (t == GGML_TYPE_COUNT) {
            out.append(py::none());
        } else {
            out.append(py::str(ggml_type_name(t)));
        }
    }
    return out;
}

py::dict type_info(const std::string & name) {
    const ggml_type type = any_type_from_name(name);
    py::dict        d;
    d["name"]             = ggml_type_name(type);
    d["id"]               = (int) type;
    d["block_size"]       = ggml_blck_size(type);
    d["type_size"]        = ggml_type_size(type);
    d["bits_per_element"] = 8.0 * ggml_type_size(type) / ggml_blck_size(type);
    d["is_quantized"]     = ggml_is_quantized(type);
    d["is_cache_type"]    = std::find(cache_types().begin(), cache_types().end(), type) != cache_types().end();
    return d;
}

py::dict build_info() {
    py::dict d;
    d["upstream_commit"] = LLAMA_TQ_UPSTREAM_COMMIT;
    d["upstream_build"]  = LLAMA_TQ_UPSTREAM_BUILD;
    d["series_hash"]     = LLAMA_TQ_SERIES_HASH;

    py::list backends;
    std::string compiled = LLAMA_TQ_BACKENDS;
    for (size_t pos = 0; pos <= compiled.size();) {
        size_t comma = compiled.find(',', pos);
        if (comma == std::string::npos) {
            comma = compiled.size();
        }
        if (comma > pos) {
            backends.append(compiled.substr(pos, comma - pos));
        }
        pos = comma + 1;
    }
    d["backends"] = backends;

    py::list archs;
    std::string cuda_archs = LLAMA_TQ_CUDA_ARCHS;
    for (size_t pos = 0; pos <= cuda_archs.size();) {
        size_t sep = cuda_archs.find_first_of(",;", pos);
        if (sep == std::string::npos) {
            sep = cuda_archs.size();
        }
        if (sep > pos) {
            archs.append(cuda_archs.substr(pos, sep - pos));
        }
        pos = sep + 1;
    }
    d["cuda_architectures"] = archs;

    py::list devices;
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        py::dict           info;
        info["name"]        = ggml_backend_dev_name(dev);
        info["description"] = ggml_backend_dev_description(dev);
        devices.append(info);
    }
    d["devices"]     = devices;
    d["system_info"] = std::string(llama_print_system_info());
    d["cache_types"] = cache_type_names();
    return d;
}

py::array_t<float> rope_position_mean(const py::array_t<float, py::array::c_style | py::array::forcecast> & mu,
                                      int n_rot, bool neox, float freq_base, float freq_scale, int64_t n_pos) {
    if (mu.ndim() != 2) {
        throw py::value_error("mu must be [n_head, n_embd_head]");
    }
    const int64_t n_head = mu.shape(0);
    const int64_t n_embd = mu.shape(1);
    if (n_rot < 0 || n_rot % 2 || n_rot > n_embd || n_pos < 1 || !(freq_base > 0.0f)) {
        throw py::value_error("need 0 <= n_rot <= n_embd_head with n_rot even, n_pos >= 1 and freq_base > 0");
    }
    py::array_t<float> out({ n_head, n_embd });
    tq_rope_position_mean(out.mutable_data(), mu.data(), n_embd, n_head, n_rot, neox, freq_base, freq_scale, n_pos);
    return out;
}

py::array_t<float> hadamard_blocks(const py::array_t<float, py::array::c_style | py::array::forcecast> & x, int nrot) {
    if (nrot < 1 || (nrot & (nrot - 1)) || x.size() % nrot) {
        throw py::value_error("nrot must be a power of two dividing the size of x");
    }
    py::array_t<float> out(x.request().shape);
    std::copy(x.data(), x.data() + x.size(), out.mutable_data());
    tq_hadamard_blocks(out.mutable_data(), (int64_t) out.size(), nrot);
    return out;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "llama-tq: bindings of the patched llama.cpp (model, context, logits, KV-cache size)";

    llama_log_set(log_callback, nullptr);
    llama_backend_init();

    m.def("build_info", &build_info, "What this build is: upstream commit, series hash, backends, CUDA archs");
    m.def("cache_types", &cache_type_names, "KV-cache type names accepted for type_k / type_v");
    m.def("set_log_level", &set_log_level, py::arg("level"),
          "llama.cpp log lines printed to stderr: debug, info, warn, error (default) or none");

    m.def("quantize", &quantize_rows, py::arg("type"), py::arg("x"),
          "Quantize float rows [n_rows, n_per_row] to a ggml type; returns uint8 [n_rows, row_size]");
    m.def("dequantize", &dequantize_rows, py::arg("type"), py::arg("data"), py::arg("n_per_row"),
          "Decode uint8 rows [n_rows, row_size] of a ggml type to float32 [n_rows, n_per_row]");
    m.def("vec_dot", &vec_dot_rows, py::arg("type"), py::arg("data"), py::arg("y"),
          "ggml's CPU dot product of every quantized row with the float vector y");
    m.def("layer_types", &layer_types, py::arg("spec"), py::arg("n_layer"),
          "The cache type of every layer under a LLAMA_TQ_K_LAYERS / LLAMA_TQ_V_LAYERS rule string (None: not named)");
    m.def("kprof_source", [](int width) {
        const char * src = tq_kprof_active_source(width);
        if (!src) {
            throw py::value_error("ktqp widths are 2 and 3");
        }
        return std::string(src);
    }, py::arg("width"), "Where the active ktqp<width> table came from: 'built-in' or a LLAMA_TQ_K_PROFILES path");
    m.def("kprof_use_builtin", [](int width) {
        if (width < 2 || width > 3) {
            throw py::value_error("ktqp widths are 2 and 3");
        }
        if (const int n = tq_kprof_holders(width); n > 0) {
            throw std::runtime_error(std::to_string(n) + " live cache(s) hold the ktqp" + std::to_string(width) +
                                     " table of " + tq_kprof_active_source(width) + "; free their contexts first");
        }
        if (!tq_kprof_set_active(width, nullptr, nullptr)) {
            throw std::runtime_error("the built-in ktqp table was refused");
        }
    }, py::arg("width"), "Make ktqp<width> use its built-in table again (a context with LLAMA_TQ_K_PROFILES set it)");
    m.def("type_info", &type_info, py::arg("type"), "Block size, bytes per block and bits per element of a type");
    m.def("rope_position_mean", &rope_position_mean, py::arg("mu"), py::arg("n_rot"), py::arg("neox"),
          py::arg("freq_base"), py::arg("freq_scale"), py::arg("n_pos"),
          "K centering: the mean over positions 0..n_pos-1 of RoPE_p(mu), mu [n_head, n_embd_head] (tq-k-means.h)");
    m.def("hadamard_blocks", &hadamard_blocks, py::arg("x"), py::arg("nrot"),
          "Every run of nrot values times attn_rot's orthonormal Walsh-Hadamard matrix");

    py::class_<model, std::shared_ptr<model>>(m, "Model")
        .def(py::init<const std::string &, int>(), py::arg("path"), py::arg("n_gpu_layers") = 0)
        .def_property_readonly("n_vocab", &model::n_vocab)
        .def_property_readonly("info", &model::info)
        .def("meta", &model::meta, py::arg("key"), "A GGUF metadata value as a string, None if absent")
        .def("tokenize", &model::tokenize, py::arg("text"), py::arg("add_special") = true,
             py::arg("parse_special") = false)
        .def("detokenize", &model::detokenize, py::arg("tokens"), py::arg("remove_special") = false);

    py::class_<context>(m, "Context")
        .def(py::init<std::shared_ptr<model>, uint32_t, uint32_t, uint32_t, const std::string &, const std::string &,
                      const py::object &, int, bool, bool>(),
             py::arg("model"), py::arg("n_ctx") = 512, py::arg("n_batch") = 0, py::arg("n_ubatch") = 0,
             py::arg("type_k") = "f16", py::arg("type_v") = "f16", py::arg("flash_attn") = "auto",
             py::arg("n_threads") = 0, py::arg("offload_kqv") = true, py::arg("collect_kv") = false)
        .def("decode", &context::decode, py::arg("tokens"), py::arg("all_logits") = true,
             "Run tokens at the next positions; returns float32 logits [n_tokens or 1, n_vocab]")
        .def("collect_kv", &context::collect_kv, py::arg("tokens"), py::arg("queries") = false,
             "Decode tokens; return the K/V rows the cache received (after the Hadamard rotation that quantized "
             "cache types get), as float32 arrays keyed 'k.<layer>' / 'v.<layer>'; with queries=True also the "
             "queries attention read, 'q.<layer>' (one row per token: its heads one after the other, rotated as K)")
        .def("reset", &context::reset, "Clear the KV cache and start again at position 0")
        .def("context_shift", &context::context_shift, py::arg("n_keep"), py::arg("n_discard"),
             "Drop positions [n_keep, n_keep + n_discard) and move the later tokens back (llama-cli's context shift)")
        .def("memory_bytes", &context::memory_bytes,
             "Bytes llama.cpp allocated for this context's memory (KV cache, plus recurrent state)")
        .def_property_readonly("n_ctx", &context::n_ctx)
        .def_property_readonly("n_past", &context::n_past)
        .def_property_readonly("type_k", &context::type_k)
        .def_property_readonly("type_v", &context::type_v);
}
