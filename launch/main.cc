// loom: command-line entry point (train, prepare, sample, export/import of Hugging Face and timm weights).
#include <cstdio>

int main() {
  std::puts("loom: under construction");
  return 0;
}
