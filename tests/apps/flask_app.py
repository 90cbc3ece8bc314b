"""A plain Flask app (test-only dependency): routing, URL building, forms, uploads, cookies,
streaming, and a failing view (Flask answers 500 and logs the traceback to wsgi.errors)."""

import hashlib

from flask import Flask, Response, jsonify, request, stream_with_context, url_for

app = Flask(__name__)


@app.get("/")
def index():
    return "flask index"


@app.get("/boom")
def boom():
    raise ValueError("flask view failed")


@app.get("/user/<name>")
def user(name):
    return jsonify(name=name, script_root=request.script_root, path=request.path,
                   url=request.url)


@app.get("/paths/<path:rest>")
def paths(rest):
    """What the app was given and the URL it builds back to this page."""
    return jsonify(script_name=request.environ["SCRIPT_NAME"],
                   path_info=request.environ["PATH_INFO"], rest=rest,
                   url=url_for("paths", rest=rest), args=request.args)


@app.post("/form")
def form():
    return jsonify(dict(request.form))


@app.post("/upload")
def upload():
    files = {field: {"filename": f.filename, "sha256": hashlib.sha256(data := f.read()).hexdigest(),
                     "length": len(data)}
             for field, f in request.files.items()}
    return jsonify(files=files, form=dict(request.form))


@app.post("/raw")
def raw():
    data = request.get_data()
    return jsonify(length=len(data), sha256=hashlib.sha256(data).hexdigest())


@app.get("/cookie/set")
def cookie_set():
    resp = jsonify(ok=True)
    resp.set_cookie("flavour", "oatmeal")
    resp.set_cookie("session", "abc123", httponly=True)
    return resp


@app.get("/cookie/get")
def cookie_get():
    return jsonify(dict(request.cookies))


@app.get("/stream")
def stream():
    count = request.args.get("n", 100, type=int)

    @stream_with_context
    def lines():
        for i in range(count):
            yield f"line {i} of {request.path}\n"
    return Response(lines(), mimetype="text/plain")
