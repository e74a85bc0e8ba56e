/* The model benchmark's WASM agent: modelbench ROUNDS REQUEST_JSON
 * Streams the request ROUNDS times; per round prints "ttft_ns total_ns pieces" measured
 * with the host's monotonic clock from just before model_chat_start. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spear.h"

static uint64_t now(void) {
    uint64_t t = 0;
    spear_time_now(SPEAR_CLOCK_MONOTONIC, &t);
    return t;
}

int main(int argc, char **argv) {
    if (argc != 3) return 64;
    int rounds = atoi(argv[1]);
    const char *req = argv[2];
    for (int i = 0; i < rounds; i++) {
        uint64_t start = now(), first = 0;
        int pieces = 0;
        int32_t h = spear_model_chat_start(req, (uint32_t)strlen(req), SPEAR_CHAT_STREAM);
        if (h < 0) return 3;
        for (;;) {
            char piece[512];
            uint32_t len = sizeof piece;
            int32_t r = spear_model_chat_recv(h, piece, &len);
            if (r == -EPIPE) break;
            if (r < 0) return 4;
            if (pieces++ == 0) first = now();
        }
        uint64_t end = now();
        spear_close(h);
        printf("%llu %llu %d\n", (unsigned long long)(first - start),
               (unsigned long long)(end - start), pieces);
    }
    return 0;
}
