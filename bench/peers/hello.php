<?php
// PHP-FPM's side of bench/compare.py: the same answers as hello_wsgi.py.
if ($_SERVER['REQUEST_METHOD'] === 'POST') {
    echo strlen(file_get_contents('php://input'));
} else {
    echo "Hello world\n";
}
