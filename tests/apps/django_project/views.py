import hashlib

from django.http import HttpResponse, JsonResponse, StreamingHttpResponse


def index(request):
    return HttpResponse("django index")


def item(request, pk):
    return JsonResponse({"pk": pk, "path": request.path, "path_info": request.path_info,
                         "script_name": request.META.get("SCRIPT_NAME"),
                         "uri": request.build_absolute_uri()})


def form(request):
    return JsonResponse({k: request.POST.getlist(k) for k in request.POST})


def upload(request):
    files = {}
    for field, f in request.FILES.items():
        data = f.read()
        files[field] = {"filename": f.name, "length": len(data),
                        "sha256": hashlib.sha256(data).hexdigest()}
    return JsonResponse({"files": files, "form": request.POST.dict()})


def cookie_set(request):
    resp = JsonResponse({"ok": True})
    resp.set_cookie("flavour", "ginger")
    resp.set_cookie("session", "xyz789", httponly=True)
    return resp


def cookie_get(request):
    return JsonResponse(dict(request.COOKIES))


def stream(request):
    count = int(request.GET.get("n", "100"))
    return StreamingHttpResponse((f"row {i}\n" for i in range(count)), content_type="text/plain")
