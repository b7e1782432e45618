// expect: not declared|undeclared identifier
// expect-count: 3
// Two errors where three are announced: the checker must refuse it.

int main() {
    int sum = undeclared_a;
    sum += undeclared_b;
    return sum;
}
