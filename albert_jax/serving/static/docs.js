// /docs: Swagger UI (served from /static/swagger, our own origin) on the service's spec.
// A file, not an inline script, so that the Content-Security-Policy can forbid inline code.
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis],
  validatorUrl: null, // no spec sent to validator.swagger.io
});
