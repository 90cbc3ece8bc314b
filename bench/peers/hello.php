<?php
// PHP-FPM's side of bench/compare.py: the same answers as hello_wsgi.py.
if ($_SERVER['REQUEST_METHOD'] === 'POST') {
    echo strlen(file_get_contents('php://input'));
} elseif (str_ends_with($_SERVER['REQUEST_URI'] ?? '', '/big')) {
    echo str_repeat('a', 102400);
} else {
    echo "Hello world\n";
}
