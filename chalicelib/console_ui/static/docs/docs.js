// The API reference: Swagger UI over the OpenAPI document this same API serves.
// "Try it out" goes to this API, under whatever prefix it is served (API Gateway adds its stage).
(function () {
  "use strict";
  var apiBase = new URL(".", window.location.href).href.replace(/\/$/, "");
  fetch("openapi.json", { headers: { Accept: "application/json" } })
    .then(function (response) {
      if (!response.ok) throw new Error("openapi.json answered " + response.status);
      return response.json();
    })
    .then(function (spec) {
      spec.servers = [{ url: apiBase, description: "this deployment" }];
      window.SwaggerUIBundle({
        spec: spec,
        dom_id: "#swagger-ui",
        deepLinking: true,
        presets: [window.SwaggerUIBundle.presets.apis],
        layout: "BaseLayout",
        defaultModelsExpandDepth: 0,
        docExpansion: "list",
        tryItOutEnabled: false,
        // As the Console does: a refused request gets no Basic challenge, so no browser login pop-up.
        requestInterceptor: function (request) {
          request.headers["X-Requested-With"] = "XMLHttpRequest";
          return request;
        },
      });
    })
    .catch(function (error) {
      var main = document.getElementById("swagger-ui");
      main.textContent = "The API reference could not be loaded: " + error.message;
    });
})();
