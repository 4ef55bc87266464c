// pocket_check: run a voxport-written Kyutai Pocket TTS export (llama.cpp's `pockettts` layout: a text
// GGUF plus an audio mmproj GGUF) through llama.cpp's own C API, and dump the numbers it computes.
//
// Why: voxport writes these files without llama.cpp's converter, so "the files look right" is not
// enough. This driver makes llama.cpp itself load both files and run every stage of the pipeline
// once, so benchmarks/llama_cpp/check_pocket_gguf.py can compare the results with voxport's torch
// graphs on the same stored weights. It is built by benchmarks/llama_cpp/build.sh against the
// llama.cpp vendored in llama-cpp-python 0.3.36 (libllama + libmtmd).
//
// What it does, in order (each step prints one `RESULT ...` line; any failure exits non-zero):
//   1. llama_model_load_from_file(text.gguf)               -> n_embd / n_layer / n_head / n_vocab, desc
//   2. llama_tokenize(--text, no specials)                 -> the ids of llama.cpp's UGM tokenizer
//   3. llama_decode(ID...) with embeddings on              -> backbone hidden state at the last position
//   4. mtmd_init_from_file(mmproj.gguf)                    -> audio support, gen type, sample rate, variant
//   5. (--voice only) mtmd_tokenize + mtmd_encode_chunk    -> voice-prompt rows (pockettts_spkenc)
//   6. mtmd_gen_audio_process GEN_CODE on the hidden state -> one flow-head latent + EOS flag; the noise
//      is made ~0 with temp = 1e-14 (temp 0 means "use the default 0.7"), so it is deterministic
//   7. mtmd_gen_audio_process GEN_WAV on that latent        -> one Mimi decoder frame from a cold state
//
// Outputs:
//   OUT.bin       int32 {n_embd, n_feats, n_samples}, then float32 hidden[n_embd], feats[n_feats],
//                 audio[n_samples]
//   OUT.bin.voice (--voice only) float32 [n_tokens, n_embd], the encoded voice rows
//
// Usage: pocket_check [--voice FILE.f32] [--text STR] [--threads N] [--kv-f32]
//                     TEXT.gguf MMPROJ.gguf OUT.bin ID...
//   --voice FILE.f32  raw little-endian float32 mono samples at the model's rate (24 kHz)
//   --text STR        text for the tokenizer check (default "Hello world.")
//   --threads N       CPU threads (default 2)
//   --kv-f32          F32 KV cache instead of llama.cpp's default F16
//   ID...             prompt token ids for step 3 (text ids, then the <|audio_bos|> row)
#include "llama.h"
#include "mtmd.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

static bool write_floats(const std::string & path, const float * data, size_t n) {
    FILE * f = fopen(path.c_str(), "wb");
    if (!f) {
        fprintf(stderr, "cannot write %s\n", path.c_str());
        return false;
    }
    bool ok = fwrite(data, sizeof(float), n, f) == n;
    return fclose(f) == 0 && ok;
}

static bool read_floats(const std::string & path, std::vector<float> & out) {
    FILE * f = fopen(path.c_str(), "rb");
    if (!f) {
        fprintf(stderr, "cannot read %s\n", path.c_str());
        return false;
    }
    float buf[4096];
    size_t got;
    while ((got = fread(buf, sizeof(float), 4096, f)) > 0) {
        out.insert(out.end(), buf, buf + got);
    }
    fclose(f);
    return true;
}

static int usage(const char * argv0) {
    fprintf(stderr,
            "usage: %s [--voice FILE.f32] [--text STR] [--threads N] [--kv-f32] "
            "TEXT.gguf MMPROJ.gguf OUT.bin ID...\n",
            argv0);
    return 2;
}

// one voice prompt through the mmproj's voice encoder; rows go to out_path
static bool encode_voice(mtmd_context * mctx, const std::string & wav_path, const std::string & out_path,
                         int n_embd) {
    std::vector<float> wav;
    if (!read_floats(wav_path, wav)) {
        return false;
    }
    mtmd_bitmap * bmp = mtmd_bitmap_init_from_audio(wav.size(), wav.data());
    mtmd_input_chunks * chunks = mtmd_input_chunks_init();
    const char * marker = mtmd_default_marker();
    mtmd_input_text txt = {marker, strlen(marker), false, false};
    const mtmd_bitmap * bmps[1] = {bmp};
    int rc = mtmd_tokenize(mctx, chunks, &txt, bmps, 1);
    printf("RESULT voice_tokenize rc=%d chunks=%zu\n", rc, mtmd_input_chunks_size(chunks));
    bool ok = rc == 0;
    for (size_t i = 0; ok && i < mtmd_input_chunks_size(chunks); i++) {
        const mtmd_input_chunk * chunk = mtmd_input_chunks_get(chunks, i);
        if (mtmd_input_chunk_get_type(chunk) != MTMD_INPUT_CHUNK_TYPE_AUDIO) {
            continue;
        }
        size_t n_tokens = mtmd_input_chunk_get_n_tokens(chunk);
        int erc = mtmd_encode_chunk(mctx, chunk);
        printf("RESULT voice_encode rc=%d n_tokens=%zu\n", erc, n_tokens);
        ok = erc == 0 && write_floats(out_path, mtmd_get_output_embd(mctx), n_tokens * (size_t) n_embd);
    }
    mtmd_input_chunks_free(chunks);
    mtmd_bitmap_free(bmp);
    return ok;
}

int main(int argc, char ** argv) {
    const char * voice = nullptr;
    std::string text = "Hello world.";
    int n_threads = 2;
    bool kv_f32 = false;
    int i = 1;
    for (; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
        std::string opt = argv[i];
        if (opt == "--kv-f32") {
            kv_f32 = true;
        } else if (i + 1 >= argc) {
            return usage(argv[0]);
        } else if (opt == "--voice") {
            voice = argv[++i];
        } else if (opt == "--text") {
            text = argv[++i];
        } else if (opt == "--threads") {
            n_threads = atoi(argv[++i]);
        } else {
            return usage(argv[0]);
        }
    }
    if (argc - i < 4) {
        return usage(argv[0]);
    }
    const char * text_path = argv[i];
    const char * mmproj_path = argv[i + 1];
    const std::string out_path = argv[i + 2];
    std::vector<llama_token> prompt;
    for (int j = i + 3; j < argc; j++) {
        prompt.push_back(atoi(argv[j]));
    }

    // 1. text model
    llama_backend_init();
    llama_model * model = llama_model_load_from_file(text_path, llama_model_default_params());
    if (!model) {
        printf("RESULT text_model_load=FAILED\n");
        return 1;
    }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_embd = llama_model_n_embd(model);
    printf("RESULT text_model_load=OK n_embd=%d n_layer=%d n_head=%d n_vocab=%d\n", n_embd,
           llama_model_n_layer(model), llama_model_n_head(model), llama_vocab_n_tokens(vocab));
    char desc[256];
    llama_model_desc(model, desc, sizeof(desc));
    printf("RESULT desc=%s\n", desc);

    // 2. tokenizer
    std::vector<llama_token> toks(text.size() + 16);
    int n_tok = llama_tokenize(vocab, text.c_str(), (int) text.size(), toks.data(), (int) toks.size(), false,
                               false);
    printf("RESULT tokenize n=%d ids=", n_tok);
    for (int j = 0; j < n_tok; j++) {
        printf("%s%d", j ? " " : "", toks[j]);
    }
    printf("\n");

    // 3. backbone
    llama_context_params cp = llama_context_default_params();
    if (kv_f32) {
        cp.type_k = GGML_TYPE_F32;
        cp.type_v = GGML_TYPE_F32;
    }
    cp.n_ctx = 256;
    cp.n_batch = 256;
    cp.embeddings = true;
    cp.n_threads = n_threads;
    cp.n_threads_batch = n_threads;
    llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) {
        printf("RESULT context=FAILED\n");
        return 1;
    }
    int rc = llama_decode(ctx, llama_batch_get_one(prompt.data(), (int) prompt.size()));
    printf("RESULT decode rc=%d n_prompt=%zu\n", rc, prompt.size());
    if (rc != 0) {
        return 1;
    }
    const float * h = llama_get_embeddings_ith(ctx, -1);
    if (!h) {
        printf("RESULT embeddings=NULL\n");
        return 1;
    }
    std::vector<float> hidden(h, h + n_embd);

    // 4. mmproj
    mtmd_context_params mparams = mtmd_context_params_default();
    mparams.use_gpu = false;
    mparams.n_threads = n_threads;
    mparams.warmup = false;
    mparams.print_timings = false;
    mtmd_context * mctx = mtmd_init_from_file(mmproj_path, model, mparams);
    if (!mctx) {
        printf("RESULT mmproj_load=FAILED\n");
        return 1;
    }
    mtmd_gen_audio_info info = mtmd_gen_audio_get_info(mctx);
    printf("RESULT mmproj_load=OK support_audio=%d gen_type=%d sample_rate=%d variant=%s\n",
           (int) mtmd_support_audio(mctx), (int) info.type, info.sample_rate,
           info.model_variant ? info.model_variant : "(null)");

    // 5. voice encoder
    if (voice && !encode_voice(mctx, voice, out_path + ".voice", n_embd)) {
        return 1;
    }

    // 6. one flow-head step, noise ~ 0
    mtmd_gen_inp inp = mtmd_gen_inp_default(mctx);
    inp.type = MTMD_GEN_PROCESS_TYPE_GEN_CODE;
    inp.embd = hidden.data();
    inp.temp = 1e-14f;  // 0 means "default 0.7"; this scales the noise to ~1e-7
    inp.seed = 0;
    mtmd_gen_out out = {};
    rc = mtmd_gen_audio_process(mctx, &inp, &out);
    printf("RESULT gen_code rc=%d n_feats=%zu is_eos=%d\n", rc, out.n_feats, (int) out.is_eos);
    if (rc != 0) {
        return 1;
    }
    std::vector<float> feats(out.feats, out.feats + out.n_feats);  // valid only until the next call

    // 7. one codec frame from a cold decoder state
    mtmd_gen_inp winp = mtmd_gen_inp_default(mctx);
    winp.type = MTMD_GEN_PROCESS_TYPE_GEN_WAV;
    winp.feats = feats.data();
    winp.n_feats = feats.size();
    winp.state_data = nullptr;
    winp.state_size = 0;
    mtmd_gen_out wout = {};
    rc = mtmd_gen_audio_process(mctx, &winp, &wout);
    printf("RESULT gen_wav rc=%d n_samples=%zu state_size=%zu\n", rc, wout.n_samples, wout.state_size);
    if (rc != 0) {
        return 1;
    }

    FILE * f = fopen(out_path.c_str(), "wb");
    if (!f) {
        fprintf(stderr, "cannot write %s\n", out_path.c_str());
        return 1;
    }
    const int dims[3] = {n_embd, (int) feats.size(), (int) wout.n_samples};
    bool ok = fwrite(dims, sizeof(int), 3, f) == 3;
    ok = ok && fwrite(hidden.data(), sizeof(float), hidden.size(), f) == hidden.size();
    ok = ok && fwrite(feats.data(), sizeof(float), feats.size(), f) == feats.size();
    ok = ok && fwrite(wout.audio, sizeof(float), wout.n_samples, f) == wout.n_samples;
    ok = fclose(f) == 0 && ok;

    mtmd_free(mctx);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    printf("RESULT done\n");
    return ok ? 0 : 1;
}
