<?php
// PHP-FPM's side of bench/compare.py: the same answers as hello_wsgi.py.
$uri = $_SERVER['REQUEST_URI'] ?? '';
if ($_SERVER['REQUEST_METHOD'] === 'POST') {
    echo strlen(file_get_contents('php://input'));
} elseif (str_ends_with($uri, '/big')) {
    echo str_repeat('a', 102400);
} else {
    if (str_ends_with($uri, '/slow')) {
        usleep(1500000);  // hello_wsgi.SLOW_S
    }
    echo "Hello world\n";
}
