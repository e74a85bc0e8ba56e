/* ask: put a question to the node's AI model, print the answer as it is generated, and
 * store it as an object.
 *
 *     clang --target=wasm32-wasi -O2 -I sdk/c -o build/ask.wasm examples/ask/ask.c
 *     spear run build/ask.wasm "What is the capital of France?"
 *     spear obj get answers/last
 *
 * Environment: ANSWER_KEY (the object key, default answers/last), MODEL (a model name of
 * the node's routing config; default: its default model), MAX_TOKENS (default 64).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spear.h"

#define MAX_QUESTION 4096

/* Append `s` to out as the inside of a JSON string; the new length (or 0 if it won't fit). */
static size_t json_escape(const char *s, char *out, size_t cap) {
    size_t n = 0;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char buf[8];
        const char *piece = buf;
        size_t len = 1;
        if (c == '"' || c == '\\') {
            buf[0] = '\\', buf[1] = (char)c, len = 2;
        } else if (c == '\n') {
            piece = "\\n", len = 2;
        } else if (c < 0x20) {
            len = (size_t)snprintf(buf, sizeof buf, "\\u%04x", c);
        } else {
            buf[0] = (char)c;
        }
        if (n + len >= cap) return 0;
        memcpy(out + n, piece, len);
        n += len;
    }
    out[n] = '\0';
    return n;
}

static int fail(int32_t handle, int32_t code, const char *what) {
    char message[512];
    uint32_t len = sizeof message - 1;
    if (handle < 0 || spear_model_chat_error(handle, message, &len) < 0 || len == 0) {
        len = (uint32_t)snprintf(message, sizeof message, "%s", strerror(-code));
    }
    message[len] = '\0';
    fprintf(stderr, "ask: %s: %s\n", what, message);
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: ask QUESTION...\n");
        return 64;
    }
    char question[MAX_QUESTION] = "";
    for (int i = 1; i < argc; i++) {
        if (strlen(question) + strlen(argv[i]) + 2 > sizeof question) break;
        if (i > 1) strcat(question, " ");
        strcat(question, argv[i]);
    }
    static char escaped[2 * MAX_QUESTION + 16];
    if (json_escape(question, escaped, sizeof escaped) == 0) {
        fprintf(stderr, "ask: the question is empty or too long\n");
        return 64;
    }
    const char *model = getenv("MODEL");
    const char *max_tokens = getenv("MAX_TOKENS");
    static char request[sizeof escaped + 512];
    int n = snprintf(request, sizeof request,
                     "{%s%s%s\"max_tokens\":%s,\"temperature\":0,"
                     "\"messages\":[{\"role\":\"user\",\"content\":\"%s\"}]}",
                     model ? "\"model\":\"" : "", model ? model : "", model ? "\"," : "",
                     max_tokens ? max_tokens : "64", escaped);

    /* Streamed: each piece is printed the moment the model produces it. */
    int32_t call = spear_model_chat_start(request, (uint32_t)n, SPEAR_CHAT_STREAM);
    if (call < 0) return fail(-1, call, "the model call was refused (see spear logs ID --stream agent)");
    static char answer[64 * 1024];
    size_t len = 0;
    for (;;) {
        char piece[1024];
        uint32_t piece_len = sizeof piece;
        int32_t r = spear_model_chat_recv(call, piece, &piece_len);
        if (r == -EPIPE) break; /* the answer is complete */
        if (r < 0) return fail(call, r, "the model failed");
        fwrite(piece, 1, (size_t)r, stdout);
        fflush(stdout);
        if (len + (size_t)r <= sizeof answer) {
            memcpy(answer + len, piece, (size_t)r);
            len += (size_t)r;
        }
    }
    spear_close(call);
    putchar('\n');

    const char *key = getenv("ANSWER_KEY");
    if (key == NULL) key = "answers/last";
    uint64_t version = 0;
    int32_t r = spear_put_str(key, answer, (uint32_t)len, SPEAR_ANY_VERSION, &version);
    if (r < 0) {
        fprintf(stderr, "ask: storing the answer failed: %s\n", strerror(-r));
        return 1;
    }
    fprintf(stderr, "ask: stored %zu bytes as %s (version %llu)\n", len, key,
            (unsigned long long)version);
    return 0;
}
