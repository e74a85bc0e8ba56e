/* An HTTP agent (docs/triggers.md): the request arrives CGI-style, as environment
 * variables and the body on stdin; the response is header lines, a blank line, then the
 * body, on stdout. With ?events=N it streams N server-sent events, one at a time.
 *
 * Build: clang --target=wasm32-wasi -O2 -o build/hello_http.wasm examples/http/hello_http.c
 * Serve: spear route add /hello build/hello_http.wasm --public
 *        curl -s "$(spear dashboard)hello?name=you" -d 'a body'
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *env(const char *name) {
    const char *value = getenv(name);
    return value ? value : "";
}

static void nap_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int main(void) {
    const char *query = env("QUERY_STRING");
    const char *events = strstr(query, "events=");
    if (events) {
        int n = atoi(events + 7);
        printf("Content-Type: text/event-stream\nCache-Control: no-cache\n\n");
        fflush(stdout);
        for (int i = 1; i <= n; i++) {
            printf("event: tick\ndata: %d\n\n", i);
            fflush(stdout); /* each event leaves as it is written */
            nap_ms(50);
        }
        printf("event: end\ndata: done\n\n");
        return 0;
    }
    const char *sleep = strstr(query, "sleep=");
    if (sleep) nap_ms(atol(sleep + 6)); /* (the tests' slow agent) */
    if (strstr(query, "fail")) {
        fprintf(stderr, "asked to fail\n");
        return 3;
    }
    const char *name = strstr(query, "name=");
    char body[4096];
    size_t got = fread(body, 1, sizeof body - 1, stdin);
    body[got] = 0;
    printf("Status: 200 OK\nContent-Type: text/plain\nX-Agent: hello_http\n\n");
    printf("Hello, %s!\n", name ? name + 5 : "web");
    printf("method=%s path=%s rest=%s\n", env("REQUEST_METHOD"), env("SCRIPT_NAME"),
           env("PATH_INFO"));
    printf("agent=%s\n", env("HTTP_USER_AGENT"));
    if (got) printf("body=%s\n", body);
    return 0;
}
