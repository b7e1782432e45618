// expect: not declared|undeclared identifier
// expect-count: 2
// Two uses of undeclared names, and nothing else wrong: the checker must accept this file.

int main() {
    int sum = undeclared_a;
    sum += undeclared_b;
    return sum;
}
