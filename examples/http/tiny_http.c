/* The smallest HTTP agent: one fixed answer (the benchmark's agent, benchmarks/http_triggers.py). */
#include <unistd.h>

int main(void) {
    static const char answer[] = "Content-Type: text/plain\n\nok\n";
    write(1, answer, sizeof answer - 1);
    return 0;
}
