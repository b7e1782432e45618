// expect: a message that no compiler prints
// Fails to compile, but not with the announced error: the checker must refuse it.

int main() {
    return undeclared;
}
