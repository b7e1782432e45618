// expect: .
// A valid program: the checker must refuse it.

int main() {
    return 0;
}
